// Drawing the chat page: messages, their actions, the sidebar and the connection banner.
// Answers stream as plain text; the finished answer arrives rendered as Markdown and
// sanitized by the server, so nothing a prompt or a model writes ever runs here.
// A view is { item, bubble, meta, text }: one message and the text streamed into it so far.

const list = document.getElementById("messages");
const banner = document.getElementById("connection");

export const STATUS_TEXT = {
  queued: "Queued…",
  running: "Thinking…",
  waiting_slot: "Waiting for the model — it is busy…",
  waiting_backend: "Waiting for the model to come back…",
};

export function atBottom() { return list.scrollHeight - list.scrollTop - list.clientHeight < 80; }
export function keepScrolled(wasAtBottom) { if (wasAtBottom) list.scrollTop = list.scrollHeight; }

// --- Messages ---------------------------------------------------------------------

export function addMessage(role, text, images) {
  const welcome = document.getElementById("welcome");
  if (welcome) welcome.remove();
  const stick = atBottom();
  const item = document.createElement("li");
  item.className = "message " + role;
  item.dataset.raw = text;
  if (images && images.length) item.appendChild(thumbnails(images));
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  item.appendChild(bubble);
  const meta = document.createElement("div");
  meta.className = "meta";
  item.appendChild(meta);
  list.appendChild(item);
  keepScrolled(stick);
  return { item, bubble, meta, text: "" };
}

// The images a prompt carried, above its text (data: URLs the page itself made).
export function thumbnails(images) {
  const row = document.createElement("div");
  row.className = "attachments";
  for (const url of images) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "Attached image";
    row.appendChild(img);
  }
  return row;
}

export function lastPrompt() {
  return Array.from(list.querySelectorAll(".message.user")).pop();
}

// Drops the last prompt and everything after it, for an edited or regenerated exchange.
export function removeLastExchange() {
  let node = lastPrompt();
  while (node) { const next = node.nextElementSibling; node.remove(); node = next; }
}

export function setMeta(view, text, kind) {
  view.meta.replaceChildren();
  if (!text) return;
  const span = document.createElement("span");
  span.textContent = text;
  if (kind) span.className = kind;
  view.meta.appendChild(span);
}

function addBadge(view, text) {
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = text;
  view.meta.prepend(badge);
}

// --- An answer, from waiting to its end ----------------------------------------------

export function showWaiting(view, text) {
  view.bubble.classList.add("typing");
  setMeta(view, text);
}

export function clearText(view) {
  view.text = "";
  view.bubble.textContent = "";
}

export function showStreaming(view, more) {
  const stick = atBottom();
  view.text += more;
  view.bubble.textContent = view.text;
  setMeta(view, "Streaming…");
  keepScrolled(stick);
}

export function showAnswer(view, frame) {
  view.text = frame.content;
  view.bubble.classList.remove("typing");
  if (frame.html != null) {
    view.bubble.classList.add("markdown");
    view.bubble.innerHTML = frame.html; // rendered and sanitized by the server
    view.item.dataset.raw = frame.content;
    addCodeCopyButtons(view.bubble);
  } else {
    view.bubble.textContent = frame.content;
    view.item.dataset.raw = frame.content;
  }
  const bits = [];
  if (frame.backend) bits.push(frame.backend + (frame.simulated ? " (simulated)" : ""));
  if (frame.usage && frame.usage.completion_tokens) bits.push(frame.usage.completion_tokens + " tokens");
  setMeta(view, bits.join(" · "));
  if (frame.cache === "hit") addBadge(view, "Cached answer");
  else if (frame.cache === "coalesced") addBadge(view, "Shared with an identical question");
}

// An answer that ended without one keeps what streamed, or says why it is empty.
function stopTyping(view, emptyText) {
  view.bubble.classList.remove("typing");
  if (!view.text) view.bubble.textContent = emptyText;
}

export function showStopped(view) {
  stopTyping(view, "Stopped before the answer began.");
  view.item.dataset.raw = view.text;
  setMeta(view, "Stopped");
}

export function showFailed(view, emptyText, error) {
  stopTyping(view, emptyText);
  view.item.classList.add("failed");
  setMeta(view, error, "error");
}

// --- Buttons on messages ------------------------------------------------------------

function button(label, title, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "ghost small-button";
  b.textContent = label;
  if (title) b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

async function copyText(text, b) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (error) {
    const area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const before = b.textContent;
  b.textContent = "Copied";
  setTimeout(function () { b.textContent = before; }, 1200);
}

export function addCodeCopyButtons(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (pre.querySelector(".copy-code")) continue;
    const b = button("Copy", "Copy this code", function () { copyText(pre.querySelector("code").innerText, b); });
    b.classList.add("copy-code");
    pre.appendChild(b);
  }
}

// Copy on every answer; Regenerate on the last answer, Edit on the last prompt, and
// Retry on a failed last answer — only when canChange (nothing on its way, and a
// conversation to change).
export function showActions(canChange, { regenerate, startEdit }) {
  for (const old of list.querySelectorAll(".message-actions")) old.remove();
  const items = Array.from(list.querySelectorAll(".message"));
  const lastUser = lastPrompt();
  const last = items[items.length - 1];
  for (const item of items) {
    const actions = document.createElement("div");
    actions.className = "message-actions";
    if (item.classList.contains("assistant") && item.dataset.raw) {
      const b = button("Copy", "Copy the answer", function () { copyText(item.dataset.raw, b); });
      actions.appendChild(b);
    }
    if (canChange && item === last && item.classList.contains("assistant")) {
      if (item.classList.contains("failed")) actions.appendChild(button("Retry", "Ask again", regenerate));
      else actions.appendChild(button("Regenerate", "Ask the model for a new answer", regenerate));
    }
    if (canChange && item === lastUser) {
      actions.appendChild(button("Edit", "Edit and resend your last message", startEdit));
    }
    if (actions.childElementCount) item.appendChild(actions);
  }
}

// --- Sidebar, title and banner ------------------------------------------------------

export function addToSidebar(id, title) {
  const sidebar = document.getElementById("conversations");
  const empty = sidebar.querySelector(".empty");
  if (empty) empty.remove();
  for (const link of sidebar.querySelectorAll("a[aria-current]")) link.removeAttribute("aria-current");
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = "/c/" + id + "/";
  link.textContent = title || "Untitled";
  link.setAttribute("aria-current", "page");
  item.appendChild(link);
  sidebar.prepend(item);
  document.getElementById("conversation-title").textContent = title || "Untitled";
  document.title = (title || "Untitled") + " · Barista";
  // Rename and Delete now have a conversation to act on.
  for (const dialogForm of document.querySelectorAll("dialog form[data-action]")) {
    dialogForm.action = dialogForm.dataset.action.replace("{id}", String(id));
  }
  for (const link of document.querySelectorAll("a[data-href]")) {
    link.href = link.dataset.href.replace("{id}", String(id));
  }
  document.getElementById("rename-title").value = title || "";
  document.querySelector("#delete-dialog [data-title]").textContent = title || "Untitled";
  document.getElementById("thread-actions").hidden = false;
}

export function showBanner(text, bad) {
  banner.hidden = !text;
  banner.textContent = text || "";
  banner.classList.toggle("bad", Boolean(bad));
}
