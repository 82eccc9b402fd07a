-- 16 requests written at once on each connection, the next batch once
-- all 16 responses are in (bench/matrix.py's pipelining row).
init = function(args)
   local r = {}
   for i = 1, 16 do
      r[i] = wrk.format(nil, "/")
   end
   req = table.concat(r)
end

request = function()
   return req
end
