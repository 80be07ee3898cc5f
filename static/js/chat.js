// The chat page: sends prompts over /ws/chat/ and shows answers as they stream in.
(function () {
  "use strict";
  const thread = document.getElementById("thread");
  const list = document.getElementById("messages");
  const form = document.getElementById("composer");
  const input = document.getElementById("prompt");
  const modelSelect = document.getElementById("model");
  const banner = document.getElementById("connection");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  let conversation = thread.dataset.conversation ? Number(thread.dataset.conversation) : null;
  const pending = JSON.parse(document.getElementById("pending-requests").textContent);

  const byRef = new Map();      // client ref -> view, until the server accepts the prompt
  const byRequest = new Map();  // request id -> view
  const ended = new Set();      // request ids already done, failed or stopped
  let socket = null;
  let retry = 0;
  let nextRef = 1;

  const STATUS_TEXT = { queued: "Queued…", running: "Thinking…" };

  function atBottom() { return list.scrollHeight - list.scrollTop - list.clientHeight < 80; }
  function keepScrolled(wasAtBottom) { if (wasAtBottom) list.scrollTop = list.scrollHeight; }

  function addMessage(role, text) {
    const welcome = document.getElementById("welcome");
    if (welcome) welcome.remove();
    const stick = atBottom();
    const item = document.createElement("li");
    item.className = "message " + role;
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

  // While an answer is on its way, Stop (or Esc) cancels it.
  function refreshButtons() {
    const busy = byRequest.size > 0 || byRef.size > 0;
    stopButton.hidden = !busy;
    sendButton.hidden = busy;
  }

  function stopAll() {
    for (const id of byRequest.keys()) send({ type: "cancel", request: id });
  }

  function finish(requestId) {
    byRequest.delete(requestId);
    ended.add(requestId);
    refreshButtons();
  }

  function setMeta(view, text, isError) {
    view.meta.textContent = "";
    const span = document.createElement("span");
    span.textContent = text;
    if (isError) span.className = "error";
    view.meta.appendChild(span);
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
  }

  function showBanner(text, bad) {
    banner.hidden = !text;
    banner.textContent = text || "";
    banner.classList.toggle("bad", Boolean(bad));
  }

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
        setMeta(v, "#" + frame.position + " in line · about " + frame.eta + " s");
        break;
      }
      case "status": {
        const v = assistantView(frame.request, frame.status);
        if (frame.restart && v.text) {
          // A worker died mid-answer and another starts over: drop the partial text.
          v.text = "";
          v.bubble.textContent = "";
        }
        break;
      }
      case "tokens": {
        const v = view || assistantView(frame.request, "running");
        // Frames carry their offset: text already shown is never appended twice.
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
        v.bubble.textContent = frame.content;
        v.bubble.classList.remove("typing");
        const bits = [];
        if (frame.cache === "hit") bits.push("Cached answer");
        else if (frame.cache === "coalesced") bits.push("Shared with an identical question");
        if (frame.backend) bits.push(frame.backend + (frame.simulated ? " (simulated)" : ""));
        if (frame.usage && frame.usage.completion_tokens) bits.push(frame.usage.completion_tokens + " tokens");
        setMeta(v, bits.join(" · "));
        finish(frame.request);
        keepScrolled(stick);
        break;
      }
      case "cancelled": {
        if (!view) break;
        view.bubble.classList.remove("typing");
        if (!view.text) view.bubble.textContent = "Stopped before the answer began.";
        setMeta(view, "Stopped");
        finish(frame.request);
        break;
      }
      case "failed": {
        const v = view || assistantView(frame.request, "running");
        v.bubble.classList.remove("typing");
        v.item.classList.add("failed");
        if (!v.text) v.bubble.textContent = "No answer.";
        setMeta(v, frame.error || "The request failed.", true);
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
          setMeta(v, frame.error, true);
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
      // Re-attach to answers still in flight (after a reload or a dropped connection).
      for (const id of byRequest.keys()) send({ type: "follow", request: id });
      while (outbox.length) send(outbox.shift());
    });
    socket.addEventListener("message", function (event) { onFrame(JSON.parse(event.data)); });
    socket.addEventListener("close", function (event) {
      if (event.code === 4401) { location.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname); return; }
      showBanner("Disconnected — reconnecting…", true);
      const delay = Math.min(10000, 500 * Math.pow(2, retry++));
      setTimeout(connect, delay);
    });
  }

  function submit() {
    const content = input.value;
    if (!content.trim() || !modelSelect.value) return;
    const ref = nextRef++;
    const fresh = document.getElementById("fresh");
    const payload = { type: "prompt", ref: ref, model: modelSelect.value, content: content, conversation: conversation };
    if (fresh && fresh.checked) payload.fresh = true;
    send(payload);
    addMessage("user", content);
    const view = addMessage("assistant", "");
    view.bubble.classList.add("typing");
    setMeta(view, "Sending…");
    byRef.set(ref, view);
    refreshButtons();
    input.value = "";
    autosize();
  }

  function autosize() { input.style.height = "auto"; input.style.height = Math.min(input.scrollHeight, window.innerHeight * 0.4) + "px"; }

  form.addEventListener("submit", function (event) { event.preventDefault(); submit(); });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); submit(); }
  });
  input.addEventListener("input", autosize);
  stopButton.addEventListener("click", stopAll);
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && !stopButton.hidden) { event.preventDefault(); stopAll(); }
  });

  for (const request of pending) assistantView(request.id, request.status);
  refreshButtons();
  list.scrollTop = list.scrollHeight;
  connect();
  input.focus();
})();
