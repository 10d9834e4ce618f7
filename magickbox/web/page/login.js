// The login form: posts to /api/v1/login (the answer sets the session cookie), then the page.
"use strict";
document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const error = document.getElementById("error");
  error.textContent = "";
  const res = await fetch("/api/v1/login", { method: "POST", body: new FormData(ev.target) });
  if (res.ok) { location.href = "/"; return; }
  let detail = res.statusText;
  try { detail = (await res.json()).detail; } catch (_) { /* keep the status text */ }
  error.textContent = typeof detail === "string" ? detail : JSON.stringify(detail);
});
