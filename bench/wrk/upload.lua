-- POST 1 MB bodies (bench/matrix.py's upload row). wrk adds the
-- Content-Length of wrk.body to every request.
wrk.method = "POST"
wrk.body = string.rep("u", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
