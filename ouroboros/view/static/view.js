// The viewer's only script (the Content-Security-Policy forbids inline ones). It inserts only
// fragments the server rendered and escaped, and never builds HTML from data.
"use strict";

function liveRounds() {
  const box = document.getElementById("rounds-box");
  if (!box) return;
  let count = Number(box.querySelector("#rounds")?.dataset.count || 0);
  let status = box.dataset.status;
  const tick = async () => {
    try {
      const live = await (await fetch(box.dataset.live, { credentials: "same-origin" })).json();
      if (live.rounds !== count || live.status !== status) {
        const html = await (await fetch(box.dataset.fragment, { credentials: "same-origin" })).text();
        box.innerHTML = html;
        count = live.rounds;
        status = live.status;
        const shown = document.getElementById("run-status");
        if (shown) shown.textContent = live.status;
        for (const img of document.querySelectorAll("#curves img")) {
          img.src = img.src.split("?")[0] + "?t=" + Date.now();
        }
      }
      if (live.status === "running") setTimeout(tick, 3000);
    } catch (e) {
      setTimeout(tick, 10000);
    }
  };
  if (status === "running") setTimeout(tick, 3000);
}

function spanTree() {
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.open, button.more");
    if (!button) return;
    button.disabled = true;
    const html = await (await fetch(button.dataset.href, { credentials: "same-origin" })).text();
    const holder = document.createElement("div");
    holder.innerHTML = html;
    const list = holder.firstElementChild;
    if (button.classList.contains("more")) {
      const li = button.closest("li");
      for (const child of Array.from(list.children)) li.parentElement.insertBefore(child, li);
      li.remove();
    } else {
      button.closest("li").appendChild(list);
      button.remove();
    }
  });
}

// The console: requests that arrive are added, and ones answered elsewhere or timed out are
// dropped, unless the person has started typing an answer there (sending it then says why).
function liveConsole() {
  const box = document.getElementById("asks");
  if (!box) return;
  const tick = async () => {
    try {
      const holder = document.createElement("div");
      holder.innerHTML = await (await fetch(box.dataset.fragment, { credentials: "same-origin" })).text();
      const now = Array.from(holder.querySelectorAll("section.ask"));
      const waiting = new Set(now.map((s) => s.dataset.key));
      for (const shown of box.querySelectorAll("section.ask")) {
        if (!waiting.has(shown.dataset.key) && !shown.querySelector("textarea").value) shown.remove();
      }
      const shown = new Set(Array.from(box.querySelectorAll("section.ask")).map((s) => s.dataset.key));
      for (const ask of now) if (!shown.has(ask.dataset.key)) box.appendChild(ask);
      document.getElementById("empty").hidden = box.querySelector("section.ask") !== null;
    } catch (e) {
      // the server is away for a moment: try again at the next tick
    }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}

document.addEventListener("DOMContentLoaded", () => { liveRounds(); spanTree(); liveConsole(); });
