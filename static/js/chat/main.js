// The chat page: sends prompts over /ws/chat/ and shows answers as they stream in.
// This module wires the page: the composer, settings, dialogs and model picker. The
// socket lives in socket.js, its frames are handled in frames.js, the answers in flight
// are tracked in answers.js, and view.js draws it all.
import { answers, answerView, busy, onChange } from "./answers.js";
import { offerFor, takeAttached } from "./images.js";
import { connect, dropConnection, send } from "./socket.js";
import {
  addCodeCopyButtons, addMessage, keepScrolled, lastPrompt, removeLastExchange, showActions,
  showWaiting,
} from "./view.js";

const thread = document.getElementById("thread");
const list = document.getElementById("messages");
const form = document.getElementById("composer");
const input = document.getElementById("prompt");
const modelSelect = document.getElementById("model");
const healthDot = document.getElementById("model-health");
const modelDown = document.getElementById("model-down");
const modelShared = document.getElementById("model-shared");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const freshBox = document.getElementById("fresh");
const temperature = document.getElementById("temperature");
const temperatureValue = document.getElementById("temperature-value");
const maxTokens = document.getElementById("max-tokens");
const editing = document.getElementById("editing");
const systemDialog = document.getElementById("system-dialog");
const systemText = document.getElementById("system-text");
const systemOpen = document.getElementById("system-open");
const sidebar = document.getElementById("sidebar");
const drawerOpen = document.getElementById("drawer-open");
const drawerBackdrop = document.getElementById("drawer-backdrop");
const pending = JSON.parse(document.getElementById("pending-requests").textContent);

let nextRef = 1;
let editMode = false;

function refreshButtons() {
  const isBusy = busy();
  stopButton.hidden = !isBusy;
  sendButton.hidden = isBusy;
  showActions(!isBusy && Boolean(answers.conversation), { regenerate, startEdit });
}

function stopAll() {
  for (const id of answers.byRequest.keys()) send({ type: "cancel", request: id });
}

// --- Sending ----------------------------------------------------------------------

function params() {
  const chosen = {};
  if (temperature.dataset.set) chosen.temperature = Number(temperature.value);
  if (maxTokens.value) chosen.max_tokens = Number(maxTokens.value);
  return chosen;
}

function submit(content, options) {
  options = options || {};
  if (!content.trim() || !modelSelect.value) return false;
  if (busy()) return false; // one answer at a time per page
  const ref = nextRef++;
  const payload = { type: "prompt", ref: ref, model: modelSelect.value, content: content, conversation: answers.conversation, params: params() };
  // A new chat's system prompt goes with its first prompt (then it is the conversation's).
  if (!answers.conversation && systemText.value.trim()) payload.system = systemText.value.trim();
  if (freshBox.checked || options.fresh) payload.fresh = true;
  const images = options.images || takeAttached();
  if (images.length) payload.images = images;
  if (options.replaceLast) { payload.replace_last = true; removeLastExchange(); }
  send(payload);
  addMessage("user", content, images);
  const view = addMessage("assistant", "");
  showWaiting(view, "Sending…");
  answers.byRef.set(ref, view);
  refreshButtons();
  return true;
}

function regenerate() {
  const lastUser = lastPrompt();
  if (!lastUser) return;
  const images = Array.from(lastUser.querySelectorAll(".attachments img"), function (img) { return img.src; });
  submit(lastUser.dataset.raw, { replaceLast: true, fresh: true, images: images });
}

function startEdit() {
  const lastUser = lastPrompt();
  if (!lastUser) return;
  editMode = true;
  editing.hidden = false;
  input.value = lastUser.dataset.raw;
  autosize();
  input.focus();
}

function endEdit() { editMode = false; editing.hidden = true; }

function clearComposer() { endEdit(); input.value = ""; autosize(); }

function submitComposer() {
  if (submit(input.value, { replaceLast: editMode })) clearComposer();
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
  modelShared.hidden = !option || option.dataset.shared !== "1";
  offerFor(option);
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
      option.dataset.images = model.images ? "1" : "0";
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

// The system prompt: saved on the conversation (a form post) once there is one; before
// that, kept here and sent with the first prompt.
systemDialog.querySelector("form").addEventListener("submit", function (event) {
  if (answers.conversation) return;
  event.preventDefault();
  systemOpen.classList.toggle("is-set", Boolean(systemText.value.trim()));
  systemDialog.close();
  input.focus();
});

// A menu closes once something in it is chosen, and when the page is clicked elsewhere.
for (const menu of document.querySelectorAll("details.menu")) {
  for (const item of menu.querySelectorAll(".menu-panel a")) {
    item.addEventListener("click", function () { menu.open = false; });
  }
  document.addEventListener("click", function (event) {
    if (menu.open && !menu.contains(event.target)) menu.open = false;
  });
}

// On a phone the conversations are a drawer over the thread.
function setDrawer(open) {
  document.body.classList.toggle("drawer-open", open);
  drawerOpen.setAttribute("aria-expanded", String(open));
  drawerBackdrop.hidden = !open;
  if (open) (sidebar.querySelector("a[aria-current]") || sidebar.querySelector("a, input")).focus();
}
drawerOpen.addEventListener("click", function () { setDrawer(!document.body.classList.contains("drawer-open")); });
drawerBackdrop.addEventListener("click", function () { setDrawer(false); });
document.addEventListener("keydown", function (event) {
  if (event.key !== "Escape" || !document.body.classList.contains("drawer-open")) return;
  event.stopImmediatePropagation(); // Esc closes the drawer; it does not also stop the answer
  setDrawer(false);
});

for (const [openId, dialogId] of [["rename-open", "rename-dialog"], ["delete-open", "delete-dialog"], ["system-open", "system-dialog"]]) {
  const opener = document.getElementById(openId);
  const dialog = document.getElementById(dialogId);
  if (!opener || !dialog) continue;
  opener.addEventListener("click", function () {
    const menu = opener.closest("details");
    if (menu) menu.open = false;
    dialog.showModal();
  });
  for (const closer of dialog.querySelectorAll("[data-close]")) closer.addEventListener("click", function () { dialog.close(); });
}

form.addEventListener("submit", function (event) { event.preventDefault(); submitComposer(); });
input.addEventListener("keydown", function (event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); submitComposer(); }
});
input.addEventListener("input", autosize);
stopButton.addEventListener("click", stopAll);
document.getElementById("edit-cancel").addEventListener("click", clearComposer);
modelSelect.addEventListener("change", showModelHealth);
document.addEventListener("keydown", function (event) {
  if (event.key !== "Escape") return;
  if (!stopButton.hidden) { event.preventDefault(); stopAll(); }
  else if (editMode) clearComposer();
});

// --- Start --------------------------------------------------------------------------

onChange(refreshButtons);
// Answers rendered by the server on load get their copy buttons too.
for (const bubble of list.querySelectorAll(".bubble.markdown")) addCodeCopyButtons(bubble);
for (const request of pending) answerView(request.id, request.status);
refreshButtons();
showTemperature();
showModelHealth();
setInterval(pollModels, 10000);
keepScrolled(true);
connect(thread.dataset.wsPath);
input.disabled = false;  // the page is ready for what is typed (see home.html)
input.focus();

// For tests and the curious: drop the connection as a flaky network would.
window.barista = { dropConnection };
