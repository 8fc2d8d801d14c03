// The list of recent pipelines: fetched every POLL_MS (or three times as long as the last
// answer took, if longer) from /ui/pipelines.json and updated in place (each pipeline keeps
// its element, found by its unique id), without a reload.
"use strict";

(() => {
  const { getJson, showDryRun, showFailure, duration, clock, el, status } = window.CiRelay;
  const POLL_MS = 1500;
  const container = document.getElementById("pipelines");
  const empty = document.getElementById("empty");
  const shown = new Map(); // unique_id -> its element

  async function poll() {
    const began = performance.now();
    try {
      const answer = await getJson("/ui/pipelines.json");
      if (answer === null) return; // on the way to the login form
      render(answer.document);
      showFailure("");
    } catch (error) {
      showFailure(error.message);
    }
    // A long history takes the relay a while to summarise: ask less often, not in a loop.
    setTimeout(poll, Math.max(POLL_MS, 3 * (performance.now() - began)));
  }

  function render(document_) {
    showDryRun(document_);
    const seen = new Set();
    document_.pipelines.forEach((summary, index) => {
      seen.add(summary.unique_id);
      const element = shown.get(summary.unique_id) || create(summary);
      update(element, summary, document_.now_s);
      if (container.children[index] !== element) {
        container.insertBefore(element, container.children[index] || null);
      }
    });
    for (const [uniqueId, element] of shown) {
      if (!seen.has(uniqueId)) {
        element.remove();
        shown.delete(uniqueId);
      }
    }
    empty.hidden = document_.pipelines.length > 0;
  }

  function create(summary) {
    const element = el("a", "pipeline", null, {
      role: "row",
      href: `/ui/pipelines/${encodeURIComponent(summary.unique_id)}`,
      "data-unique-id": summary.unique_id,
    });
    const name = el("span", "name", null, { role: "cell" });
    name.append(el("span", "title"), el("span", "id", summary.unique_id));
    element.append(
      name,
      el("span", "status-cell", null, { role: "cell" }),
      el("span", "start", null, { role: "cell" }),
      el("span", "duration number", null, { role: "cell" }),
      el("span", "jobs number", null, { role: "cell" }),
      el("span", "problems-count number", null, { role: "cell" }),
    );
    shown.set(summary.unique_id, element);
    return element;
  }

  function update(element, summary, now) {
    element.dataset.status = summary.status;
    setText(element.querySelector(".title"), summary.name || "(unnamed pipeline)");
    const cell = element.querySelector(".status-cell");
    if (cell.textContent !== summary.status) cell.replaceChildren(status(summary.status));
    setText(element.querySelector(".start"), clock(summary.start_s));
    setText(element.querySelector(".duration"), took(summary, now));
    setText(element.querySelector(".jobs"), summary.jobs);
    const problems = element.querySelector(".problems-count");
    problems.dataset.count = summary.problems;
    setText(problems, summary.problems);
    element.title = fatesText(summary.fates);
  }

  // The duration, or for a pipeline still going, how long it has run so far.
  function took(summary, now) {
    if (summary.duration_s !== null) return duration(summary.duration_s);
    if (summary.start_s !== null && summary.end_s === null) return `${duration(now - summary.start_s)}…`;
    return "";
  }

  function fatesText(fates) {
    const parts = Object.entries(fates || {}).filter(([, n]) => n > 0);
    return parts.map(([fate, n]) => `${n} ${fate.replace("_", " ")}`).join(", ");
  }

  function setText(element, value) {
    const text = String(value);
    if (element.textContent !== text) element.textContent = text;
  }

  poll();
})();
