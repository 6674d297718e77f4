// A tiny web app: GET / greets, GET /health answers for the HEALTHCHECK.
const http = require("http");
const ms = require("ms");

const GREETING = "Hello from node-web";

const server = http.createServer((request, response) => {
  if (request.url === "/health") {
    response.end("ok\n");
    return;
  }
  response.end(`${GREETING} (up ${ms(Math.round(process.uptime() * 1000) + 60000)})\n`);
});

server.listen(Number(process.env.PORT || 3000), process.env.HOST || "0.0.0.0");
