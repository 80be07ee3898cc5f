// What the server sends on the chat socket: one small handler per frame type. Each gets
// the frame and the view of its answer, if the page has one yet.
import { answers, answerView, changed, finish, setConversation } from "./answers.js";
import {
  addToSidebar, atBottom, clearText, keepScrolled, setMeta, showAnswer, showBanner, showFailed,
  showStopped, showStreaming, STATUS_TEXT,
} from "./view.js";

const handlers = {
  accepted(frame) {
    const view = answers.byRef.get(frame.ref);
    answers.byRef.delete(frame.ref);
    if (view) answers.byRequest.set(frame.request, view);
    changed();
    if (frame.conversation && answers.conversation !== frame.conversation) {
      setConversation(frame.conversation);
      history.replaceState(null, "", "/c/" + frame.conversation + "/");
      addToSidebar(frame.conversation, frame.title);
    }
    if (view) setMeta(view, STATUS_TEXT[frame.status] || "Queued…");
  },

  queue(frame, view) {
    const v = view || answerView(frame.request, "queued");
    setMeta(v, "#" + frame.position + " in line · about " + frame.eta + " s", "queue");
  },

  status(frame) {
    const v = answerView(frame.request, frame.status);
    // Another worker starts this answer over: drop the partial text.
    if (frame.restart && v.text) clearText(v);
  },

  tokens(frame, view) {
    const v = view || answerView(frame.request, "running");
    // Frames carry their offset: text already shown is never appended twice, and
    // after a gap (a dropped connection) the rest waits for the final frame.
    if (frame.offset > v.text.length) return;
    showStreaming(v, frame.text.slice(v.text.length - frame.offset));
  },

  done(frame, view) {
    const v = view || answerView(frame.request, "running");
    const stick = atBottom();
    showAnswer(v, frame);
    finish(frame.request);
    keepScrolled(stick); // after finish: the answer's new buttons count too
  },

  cancelled(frame, view) {
    if (!view) return;
    showStopped(view);
    finish(frame.request);
  },

  failed(frame, view) {
    showFailed(view || answerView(frame.request, "running"), "No answer.", frame.error || "The request failed.");
    finish(frame.request);
  },

  // A refused prompt carries its ref (it never got a request id); anything else is the page's.
  error(frame) {
    const view = frame.ref != null ? answers.byRef.get(frame.ref) : null;
    if (!view) {
      showBanner(frame.error, true);
      return;
    }
    answers.byRef.delete(frame.ref);
    showFailed(view, "Not sent.", frame.error);
    changed();
  },
};

export function handleFrame(frame) {
  // A late frame for an answer that already ended (e.g. tokens after Stop) is ignored.
  if (frame.request && answers.ended.has(frame.request)) return;
  // Own keys only: a frame type such as "constructor" must not reach Object's methods.
  if (!Object.prototype.hasOwnProperty.call(handlers, frame.type)) return;
  handlers[frame.type](frame, frame.request ? answers.byRequest.get(frame.request) : null);
}
