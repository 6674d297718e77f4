"""A tiny web app: GET / greets, GET /health answers for the HEALTHCHECK."""

import os

from bottle import Bottle, run

GREETING = "Hello from python-web"

app = Bottle()


@app.get("/")
def index():
    return GREETING + "\n"


@app.get("/health")
def health():
    return "ok\n"


if __name__ == "__main__":
    run(app, host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "8000")), quiet=True)
