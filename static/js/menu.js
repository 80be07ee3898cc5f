// The top bar's menu on a phone: one button shows and hides the account links.
const button = document.getElementById("menu-button");
const nav = document.getElementById("topnav");
if (button && nav) {
  function setOpen(open) {
    nav.classList.toggle("open", open);
    button.setAttribute("aria-expanded", String(open));
  }
  button.addEventListener("click", function () { setOpen(!nav.classList.contains("open")); });
  document.addEventListener("keydown", function (event) { if (event.key === "Escape") setOpen(false); });
  document.addEventListener("click", function (event) {
    if (!nav.contains(event.target) && !button.contains(event.target)) setOpen(false);
  });
}
