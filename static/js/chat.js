// The chat page: sends prompts over /ws/chat/ and shows answers as they stream in.
// Answers stream as plain text; the finished answer arrives rendered as Markdown and
// sanitized by the server, so nothing a prompt or a model writes ever runs here.
(function () {
  "use strict";
  const thread = document.getElementById("thread");
  const list = document.getElementById("messages");
  const form = document.getElementById("composer");
  const input = document.getElementById("prompt");
  const modelSelect = document.getElementById("model");
  const healthDot = document.getElementById("model-health");
  const modelDown = document.getElementById("model-down");
  const banner = document.getElementById("connection");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const freshBox = document.getElementById("fresh");
  const temperature = document.getElementById("temperature");
  const temperatureValue = document.getElementById("temperature-value");
  const maxTokens = document.getElementById("max-tokens");
  const editing = document.getElementById("editing");
  let conversation = thread.dataset.conversation ? Number(thread.dataset.conversation) : null;
  const pending = JSON.parse(document.getElementById("pending-requests").textContent);

  const byRef = new Map();      // client ref -> view, until the server accepts the prompt
  const byRequest = new Map();  // request id -> view
  const ended = new Set();      // request ids already done, failed or stopped
  let socket = null;
  let retry = 0;
  let nextRef = 1;
  let editMode = false;

  const STATUS_TEXT = { queued: "Queued…", running: "Thinking…" };

  function atBottom() { return list.scrollHeight - list.scrollTop - list.clientHeight < 80; }
  function keepScrolled(wasAtBottom) { if (wasAtBottom) list.scrollTop = list.scrollHeight; }

  // --- Messages ---------------------------------------------------------------------

  function viewOf(item) {
    return { item, bubble: item.querySelector(".bubble"), meta: item.querySelector(".meta"), text: item.dataset.raw || "" };
  }

  function addMessage(role, text) {
    const welcome = document.getElementById("welcome");
    if (welcome) welcome.remove();
    const stick = atBottom();
    const item = document.createElement("li");
    item.className = "message " + role;
    item.dataset.raw = text;
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

  function setMeta(view, text, kind) {
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

  function showMarkdown(view, html, raw) {
    view.bubble.classList.add("markdown");
    view.bubble.innerHTML = html; // rendered and sanitized by the server
    view.item.dataset.raw = raw;
    addCodeCopyButtons(view.bubble);
  }

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

  function addCodeCopyButtons(root) {
    for (const pre of root.querySelectorAll("pre")) {
      if (pre.querySelector(".copy-code")) continue;
      const b = button("Copy", "Copy this code", function () { copyText(pre.querySelector("code").innerText, b); });
      b.classList.add("copy-code");
      pre.appendChild(b);
    }
  }

  // Copy on every answer; Regenerate on the last answer, Edit on the last prompt, and
  // Retry on a failed last answer — while nothing is on its way.
  function refreshActions() {
    for (const old of list.querySelectorAll(".message-actions")) old.remove();
    const items = Array.from(list.querySelectorAll(".message"));
    const busy = byRequest.size > 0 || byRef.size > 0;
    const lastUser = items.filter((i) => i.classList.contains("user")).pop();
    const last = items[items.length - 1];
    for (const item of items) {
      const actions = document.createElement("div");
      actions.className = "message-actions";
      if (item.classList.contains("assistant") && item.dataset.raw) {
        const b = button("Copy", "Copy the answer", function () { copyText(item.dataset.raw, b); });
        actions.appendChild(b);
      }
      if (!busy && conversation && item === last && item.classList.contains("assistant")) {
        if (item.classList.contains("failed")) actions.appendChild(button("Retry", "Ask again", regenerate));
        else actions.appendChild(button("Regenerate", "Ask the model for a new answer", regenerate));
      }
      if (!busy && conversation && item === lastUser) {
        actions.appendChild(button("Edit", "Edit and resend your last message", startEdit));
      }
      if (actions.childElementCount) item.appendChild(actions);
    }
  }

  function refreshButtons() {
    const busy = byRequest.size > 0 || byRef.size > 0;
    stopButton.hidden = !busy;
    sendButton.hidden = busy;
    refreshActions();
  }

  function stopAll() {
    for (const id of byRequest.keys()) send({ type: "cancel", request: id });
  }

  function finish(requestId) {
    byRequest.delete(requestId);
    ended.add(requestId);
    refreshButtons();
  }

  function assistantView(requestId, status) {
    let view = byRequest.get(requestId);
    if (!view) {
      view = addMessage("assistant", "");
      byRequest.set(requestId, view);
    }
    view.bubble.classList.add("typing");
    setMeta(view, STATUS_TEXT[status] || "Working…");
    return view;
  }

  // --- Sidebar and title ------------------------------------------------------------

  function addToSidebar(id, title) {
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
    document.getElementById("rename-title").value = title || "";
    document.querySelector("#delete-dialog [data-title]").textContent = title || "Untitled";
    document.getElementById("thread-actions").hidden = false;
  }

  function showBanner(text, bad) {
    banner.hidden = !text;
    banner.textContent = text || "";
    banner.classList.toggle("bad", Boolean(bad));
  }

  // --- The socket -------------------------------------------------------------------

  // Frames wait here while the socket is (re)connecting, and go out once it opens.
  const outbox = [];

  function send(payload) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(payload));
    else outbox.push(payload);
  }

  function onFrame(frame) {
    // A late frame for an answer that already ended (e.g. tokens after Stop) is ignored.
    if (frame.request && ended.has(frame.request)) return;
    const view = frame.request ? byRequest.get(frame.request) : null;
    switch (frame.type) {
      case "accepted": {
        const v = byRef.get(frame.ref);
        byRef.delete(frame.ref);
        if (v) byRequest.set(frame.request, v);
        refreshButtons();
        if (frame.conversation && conversation !== frame.conversation) {
          conversation = frame.conversation;
          thread.dataset.conversation = String(conversation);
          history.replaceState(null, "", "/c/" + conversation + "/");
          addToSidebar(conversation, frame.title);
        }
        if (v) setMeta(v, STATUS_TEXT[frame.status] || "Queued…");
        break;
      }
      case "queue": {
        const v = view || assistantView(frame.request, "queued");
        setMeta(v, "#" + frame.position + " in line · about " + frame.eta + " s", "queue");
        break;
      }
      case "status": {
        const v = assistantView(frame.request, frame.status);
        if (frame.restart && v.text) {
          // Another worker starts this answer over: drop the partial text.
          v.text = "";
          v.bubble.textContent = "";
        }
        break;
      }
      case "tokens": {
        const v = view || assistantView(frame.request, "running");
        // Frames carry their offset: text already shown is never appended twice, and
        // after a gap (a dropped connection) the rest waits for the final frame.
        if (frame.offset > v.text.length) break;
        const fresh = frame.text.slice(v.text.length - frame.offset);
        const stick = atBottom();
        v.text += fresh;
        v.bubble.textContent = v.text;
        setMeta(v, "Streaming…");
        keepScrolled(stick);
        break;
      }
      case "done": {
        const v = view || assistantView(frame.request, "running");
        const stick = atBottom();
        v.text = frame.content;
        v.bubble.classList.remove("typing");
        if (frame.html != null) showMarkdown(v, frame.html, frame.content);
        else { v.bubble.textContent = frame.content; v.item.dataset.raw = frame.content; }
        const bits = [];
        if (frame.backend) bits.push(frame.backend + (frame.simulated ? " (simulated)" : ""));
        if (frame.usage && frame.usage.completion_tokens) bits.push(frame.usage.completion_tokens + " tokens");
        setMeta(v, bits.join(" · "));
        if (frame.cache === "hit") addBadge(v, "Cached answer");
        else if (frame.cache === "coalesced") addBadge(v, "Shared with an identical question");
        finish(frame.request);
        keepScrolled(stick);
        break;
      }
      case "cancelled": {
        if (!view) break;
        view.bubble.classList.remove("typing");
        if (!view.text) view.bubble.textContent = "Stopped before the answer began.";
        view.item.dataset.raw = view.text;
        setMeta(view, "Stopped");
        finish(frame.request);
        break;
      }
      case "failed": {
        const v = view || assistantView(frame.request, "running");
        v.bubble.classList.remove("typing");
        v.item.classList.add("failed");
        if (!v.text) v.bubble.textContent = "No answer.";
        setMeta(v, frame.error || "The request failed.", "error");
        finish(frame.request);
        break;
      }
      case "error": {
        const v = frame.ref != null ? byRef.get(frame.ref) : null;
        if (v) {
          byRef.delete(frame.ref);
          v.bubble.classList.remove("typing");
          v.item.classList.add("failed");
          v.bubble.textContent = "Not sent.";
          setMeta(v, frame.error, "error");
          refreshButtons();
        } else {
          showBanner(frame.error, true);
        }
        break;
      }
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + thread.dataset.wsPath);
    socket.addEventListener("open", function () {
      retry = 0;
      showBanner("");
      // Re-attach to answers still in flight (after a reload or a dropped connection):
      // the server answers from the database — the final text if it finished meanwhile.
      for (const id of byRequest.keys()) send({ type: "follow", request: id });
      while (outbox.length) send(outbox.shift());
    });
    socket.addEventListener("message", function (event) { onFrame(JSON.parse(event.data)); });
    socket.addEventListener("close", function (event) {
      if (event.code === 4401) { location.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname); return; }
      showBanner("Connection lost — reconnecting…", true);
      const delay = Math.min(10000, 500 * Math.pow(2, retry++));
      setTimeout(connect, delay);
    });
  }

  // --- Sending ----------------------------------------------------------------------

  function params() {
    const chosen = {};
    if (temperature.dataset.set) chosen.temperature = Number(temperature.value);
    if (maxTokens.value) chosen.max_tokens = Number(maxTokens.value);
    return chosen;
  }

  function removeLastExchange() {
    const items = Array.from(list.querySelectorAll(".message"));
    const lastUser = items.filter((i) => i.classList.contains("user")).pop();
    if (!lastUser) return;
    let node = lastUser;
    while (node) { const next = node.nextElementSibling; node.remove(); node = next; }
  }

  function submit(content, options) {
    options = options || {};
    if (!content.trim() || !modelSelect.value) return false;
    if (byRequest.size || byRef.size) return false; // one answer at a time per page
    const ref = nextRef++;
    const payload = { type: "prompt", ref: ref, model: modelSelect.value, content: content, conversation: conversation, params: params() };
    if (freshBox.checked || options.fresh) payload.fresh = true;
    if (options.replaceLast) { payload.replace_last = true; removeLastExchange(); }
    send(payload);
    addMessage("user", content);
    const view = addMessage("assistant", "");
    view.bubble.classList.add("typing");
    setMeta(view, "Sending…");
    byRef.set(ref, view);
    refreshButtons();
    return true;
  }

  function regenerate() {
    const lastUser = Array.from(list.querySelectorAll(".message.user")).pop();
    if (lastUser) submit(lastUser.dataset.raw, { replaceLast: true, fresh: true });
  }

  function startEdit() {
    const lastUser = Array.from(list.querySelectorAll(".message.user")).pop();
    if (!lastUser) return;
    editMode = true;
    editing.hidden = false;
    input.value = lastUser.dataset.raw;
    autosize();
    input.focus();
  }

  function endEdit() { editMode = false; editing.hidden = true; }

  function submitComposer() {
    if (submit(input.value, { replaceLast: editMode })) {
      endEdit();
      input.value = "";
      autosize();
    }
  }

  function autosize() { input.style.height = "auto"; input.style.height = Math.min(input.scrollHeight, window.innerHeight * 0.4) + "px"; }

  // --- Model picker, settings, dialogs ------------------------------------------------

  function showModelHealth() {
    const option = modelSelect.selectedOptions[0];
    const up = option && option.dataset.up === "1";
    healthDot.dataset.up = option ? (up ? "1" : "0") : "";
    healthDot.title = !option ? "" : up ? "Answering" : option.dataset.reason;
    healthDot.setAttribute("aria-label", !option ? "No model" : up ? modelSelect.value + " is answering" : option.dataset.reason);
    modelDown.hidden = !option || up;
    modelDown.textContent = option && !up ? modelSelect.value + ": " + option.dataset.reason : "";
  }

  async function pollModels() {
    try {
      const response = await fetch(thread.dataset.modelsUrl, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const data = await response.json();
      for (const model of data.models) {
        const option = Array.from(modelSelect.options).find((o) => o.value === model.alias);
        if (!option) continue;
        option.dataset.up = model.up ? "1" : "0";
        option.dataset.reason = model.reason;
        option.disabled = !model.up && option !== modelSelect.selectedOptions[0];
        option.textContent = model.alias + (model.simulated ? " (simulated)" : "") + (model.up ? "" : " — down");
      }
      showModelHealth();
    } catch (error) { /* offline for a moment: the next poll tries again */ }
  }

  function showTemperature() {
    temperatureValue.textContent = temperature.dataset.set ? Number(temperature.value).toFixed(1) : "default";
  }
  temperature.addEventListener("input", function () { temperature.dataset.set = "1"; showTemperature(); });
  document.getElementById("params-reset").addEventListener("click", function () {
    temperature.dataset.set = "";
    temperature.value = "1";
    maxTokens.value = "";
    showTemperature();
  });

  for (const [openId, dialogId] of [["rename-open", "rename-dialog"], ["delete-open", "delete-dialog"]]) {
    const opener = document.getElementById(openId);
    const dialog = document.getElementById(dialogId);
    if (!opener || !dialog) continue;
    opener.addEventListener("click", function () { dialog.showModal(); });
    for (const closer of dialog.querySelectorAll("[data-close]")) closer.addEventListener("click", function () { dialog.close(); });
  }

  form.addEventListener("submit", function (event) { event.preventDefault(); submitComposer(); });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); submitComposer(); }
  });
  input.addEventListener("input", autosize);
  stopButton.addEventListener("click", stopAll);
  document.getElementById("edit-cancel").addEventListener("click", function () { endEdit(); input.value = ""; autosize(); });
  modelSelect.addEventListener("change", showModelHealth);
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    if (!stopButton.hidden) { event.preventDefault(); stopAll(); }
    else if (editMode) { endEdit(); input.value = ""; autosize(); }
  });

  // Answers rendered by the server on load get their copy buttons too.
  for (const bubble of list.querySelectorAll(".bubble.markdown")) addCodeCopyButtons(bubble);
  for (const request of pending) assistantView(request.id, request.status);
  refreshButtons();
  showTemperature();
  showModelHealth();
  setInterval(pollModels, 10000);
  list.scrollTop = list.scrollHeight;
  connect();
  input.focus();

  // For tests and the curious: drop the connection as a flaky network would.
  window.barista = { dropConnection: function () { if (socket) socket.close(); } };
})();
