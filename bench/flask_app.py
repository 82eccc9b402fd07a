"""A Flask JSON endpoint for bench/matrix.py: the server's share of a
request that goes through a real framework."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/")
def index():
    return jsonify(message="Hello, World!", items=list(range(10)))
