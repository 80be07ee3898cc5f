// Images attached to the next prompt: read from the person's own files, shrunk to fit the
// server's limit if need be, sent inline with the prompt (data: URLs; nothing is fetched
// from anywhere else). Offered only on models whose backends read images.
import { thumbnails } from "./view.js";

const picker = document.getElementById("attach-input");
const button = document.getElementById("attach");
const tray = document.getElementById("attached");
const limit = Number(button.dataset.limit);      // bytes per image
const totalLimit = Number(button.dataset.total);  // bytes per prompt
const most = Number(button.dataset.most);
const note = document.getElementById("attach-note");

export const attached = [];

function bytesOf(dataUrl) {
  const base64 = dataUrl.slice(dataUrl.indexOf(",") + 1);
  return Math.floor(base64.length * 3 / 4) - (base64.endsWith("==") ? 2 : base64.endsWith("=") ? 1 : 0);
}

function readAsDataUrl(file) {
  return new Promise(function (resolve, reject) {
    const reader = new FileReader();
    reader.onload = function () { resolve(reader.result); };
    reader.onerror = function () { reject(reader.error); };
    reader.readAsDataURL(file);
  });
}

// A photo too big to send as it is becomes a JPEG small enough: smaller sides first,
// then lower quality.
async function shrunk(file) {
  const bitmap = await createImageBitmap(file);
  for (const side of [1568, 1280, 1024, 768, 512]) {
    const scale = Math.min(1, side / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff"; // transparency has no place in a JPEG
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    for (const quality of [0.85, 0.7, 0.55]) {
      const url = canvas.toDataURL("image/jpeg", quality);
      if (bytesOf(url) <= limit) return url;
    }
  }
  throw new Error("too big");
}

async function add(file) {
  if (!/^image\/(png|jpeg|gif|webp)$/.test(file.type)) throw new Error(file.name + " is not a PNG, JPEG, WebP or GIF image.");
  let url = await readAsDataUrl(file);
  if (bytesOf(url) > limit) url = await shrunk(file);
  const used = attached.reduce(function (sum, u) { return sum + bytesOf(u); }, 0);
  if (used + bytesOf(url) > totalLimit) throw new Error("Those images are more than one prompt can carry.");
  attached.push(url);
}

function show() {
  tray.replaceChildren();
  tray.hidden = attached.length === 0;
  if (!attached.length) return;
  const row = thumbnails(attached);
  row.querySelectorAll("img").forEach(function (img, index) {
    const holder = document.createElement("span");
    holder.className = "attachment";
    img.replaceWith(holder);
    holder.appendChild(img);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove-attachment";
    remove.setAttribute("aria-label", "Remove image " + (index + 1));
    remove.textContent = "×";
    remove.addEventListener("click", function () { attached.splice(index, 1); show(); });
    holder.appendChild(remove);
  });
  tray.appendChild(row);
}

export function takeAttached() {
  const taken = attached.splice(0);
  show();
  return taken;
}

// Shown only where the chosen model reads images (and what was attached goes if not).
export function offerFor(option) {
  const reads = Boolean(option && option.dataset.images === "1");
  button.hidden = !reads;
  if (!reads && attached.length) takeAttached();
}

button.addEventListener("click", function () { picker.click(); });
picker.addEventListener("change", async function () {
  note.textContent = "";
  for (const file of Array.from(picker.files)) {
    if (attached.length >= most) { note.textContent = "At most " + most + " images per prompt."; break; }
    try { await add(file); } catch (error) {
      note.textContent = error.message === "too big" ? file.name + " is too big to send, even shrunk." : error.message;
    }
  }
  picker.value = "";
  show();
});
