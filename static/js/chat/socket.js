// The chat page's WebSocket: it reconnects after a drop, holds frames back while it is
// down, and on every (re)open follows the answers still in flight.
import { answers } from "./answers.js";
import { handleFrame } from "./frames.js";
import { showBanner } from "./view.js";

let socket = null;
let retry = 0;
// Frames wait here while the socket is (re)connecting, and go out once it opens.
const outbox = [];

export function send(payload) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(payload));
  else outbox.push(payload);
}

export function connect(path) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  socket = new WebSocket(scheme + location.host + path);
  socket.addEventListener("open", function () {
    retry = 0;
    showBanner("");
    // Re-attach to answers still in flight (after a reload or a dropped connection):
    // the server answers from the database — the final text if it finished meanwhile.
    for (const id of answers.byRequest.keys()) send({ type: "follow", request: id });
    while (outbox.length) send(outbox.shift());
  });
  socket.addEventListener("message", function (event) { handleFrame(JSON.parse(event.data)); });
  socket.addEventListener("close", function (event) {
    if (event.code === 4401) { location.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname); return; }
    showBanner("Connection lost — reconnecting…", true);
    const delay = Math.min(10000, 500 * Math.pow(2, retry++));
    setTimeout(function () { connect(path); }, delay);
  });
}

// Closes the socket as a flaky network would; it then reconnects like after any drop.
export function dropConnection() { if (socket) socket.close(); }
