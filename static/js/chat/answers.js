// The answers this page waits for, shared by the chat modules: known by the client's ref
// until the server accepts the prompt, then by request id until the answer ends.
import { addMessage, showWaiting, STATUS_TEXT } from "./view.js";

const thread = document.getElementById("thread");

export const answers = {
  conversation: thread.dataset.conversation ? Number(thread.dataset.conversation) : null,
  byRef: new Map(),      // client ref -> view, until the server accepts the prompt
  byRequest: new Map(),  // request id -> view
  ended: new Set(),      // request ids already done, failed or stopped
};

export function busy() { return answers.byRequest.size > 0 || answers.byRef.size > 0; }

export function setConversation(id) {
  answers.conversation = id;
  thread.dataset.conversation = String(id);
}

// What is in flight decides which buttons the page shows; main.js redraws them.
let redraw = function () {};
export function onChange(callback) { redraw = callback; }
export function changed() { redraw(); }

export function answerView(requestId, status) {
  let view = answers.byRequest.get(requestId);
  if (!view) {
    view = addMessage("assistant", "");
    answers.byRequest.set(requestId, view);
  }
  showWaiting(view, STATUS_TEXT[status] || "Working…");
  return view;
}

export function finish(requestId) {
  answers.byRequest.delete(requestId);
  answers.ended.add(requestId);
  changed();
}
