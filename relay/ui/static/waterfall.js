// One pipeline as a waterfall: a row per event (pipeline, stages, their jobs, the jobs'
// steps), each a bar on one time axis coloured by status; a job's queue time drawn before its
// start, apart from its run; the critical path outlined; the problems listed below. Read
// from this page's address with ".json" appended, again every few seconds.
"use strict";

(() => {
  const { getJson, contentKey, showDryRun, showFailure, duration, clock, el, status, safeUrl } =
    window.CiRelay;
  const LIVE_POLL_MS = 2000; // while anything runs or waits to be sent
  const SETTLED_POLL_MS = 15000;
  const TICK_STEPS_S = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
    7200, 10800, 21600, 43200, 86400];
  const MAX_TICKS = 10;
  const waterfall = document.getElementById("waterfall");
  const axis = document.getElementById("axis").querySelector(".track");
  let lastKey = "";
  let drawn = false;

  async function poll() {
    let live = true;
    try {
      const answer = await getJson(`${location.pathname}.json`);
      if (answer === null) return; // on the way to the login form
      live = isLive(answer.document);
      const key = contentKey(answer.text);
      if (key !== lastKey || live) render(answer.document);
      lastKey = key;
      showFailure("");
    } catch (error) {
      showFailure(error.message);
    }
    setTimeout(poll, live ? LIVE_POLL_MS : SETTLED_POLL_MS);
  }

  function render(doc) {
    showDryRun(doc);
    const rows = rowsOf(doc);
    const span = spanOf(rows, doc.now_s);
    const faulty = new Set(doc.problems.map((p) => `${p.level}\u0000${p.id}`));
    showHeading(doc, rows);
    const fragment = document.createDocumentFragment();
    fragment.append(gridlines(span));
    for (const row of rows) fragment.append(rowElement(row, span, doc.now_s, faulty));
    waterfall.replaceChildren(fragment);
    axis.replaceChildren(...ticks(span));
    showProblems(doc, rows);
    if (!drawn) {
      drawn = true;
      // After the next frame is painted: the bars are laid out and on the screen.
      requestAnimationFrame(() => setTimeout(() => performance.mark("ci-relay:drawn")));
    }
    waterfall.dataset.bars = String(rows.length);
  }

  function isLive(doc) {
    if (doc.status === "running" || doc.status === "unknown") return true;
    return rowsOf(doc).some(({ node }) => node.status === "running" || node.fate === "pending");
  }

  // Every event in display order, with its depth: the pipeline, each stage with its jobs
  // and their steps, then the jobs and steps that hang directly under the pipeline.
  function rowsOf(doc) {
    const rows = [];
    const job = (node, depth) => {
      rows.push({ node, depth });
      for (const step of node.steps || []) rows.push({ node: step, depth: depth + 1 });
    };
    if (doc.pipeline) rows.push({ node: doc.pipeline, depth: 0 });
    for (const stage of doc.stages) {
      rows.push({ node: stage, depth: 1 });
      for (const child of stage.jobs || []) job(child, 2);
    }
    for (const child of doc.jobs) job(child, 1);
    for (const step of doc.steps) rows.push({ node: step, depth: 1 });
    return rows;
  }

  // When a node began to wait: its start minus its queue time.
  function queuedFrom(node) {
    if (node.start_s === null) return null;
    return node.start_s - (node.queue_time_ms || 0) / 1000;
  }

  // A node's end, or now for one still running.
  function endOf(node, now) {
    if (node.end_s !== null) return node.end_s;
    return node.start_s === null ? null : Math.max(now, node.start_s);
  }

  function spanOf(rows, now) {
    let from = Infinity;
    let to = -Infinity;
    for (const { node } of rows) {
      const begin = queuedFrom(node);
      const end = endOf(node, now);
      if (begin !== null) from = Math.min(from, begin);
      if (end !== null) to = Math.max(to, end);
    }
    if (!Number.isFinite(from)) from = now;
    if (!Number.isFinite(to) || to <= from) to = from + 1;
    return { from, to, length: to - from };
  }

  function percent(span, moment) {
    return ((moment - span.from) / span.length) * 100;
  }

  function place(element, span, begin, end) {
    element.style.left = `${percent(span, begin)}%`;
    element.style.width = `${Math.max(0, percent(span, end) - percent(span, begin))}%`;
  }

  function rowElement({ node, depth }, span, now, faulty) {
    const row = el("div", `row depth-${depth}`, null, { "data-level-row": node.level });
    row.append(label(node, faulty), track(node, span, now));
    return row;
  }

  function label(node, faulty) {
    const cell = el("span", "label");
    cell.append(el("span", "level", node.level));
    const url = safeUrl(node.url);
    const name = url
      ? el("a", "name", node.name, { href: url, target: "_blank", rel: "noopener noreferrer" })
      : el("span", "name", node.name);
    name.title = node.name;
    cell.append(name);
    if (node.critical) cell.append(el("span", "tag critical", "critical"));
    if (faulty.has(`${node.level}\u0000${node.id}`)) cell.append(el("span", "tag fault", "problem"));
    if (node.fate === "pending" || node.fate === "dead_lettered") {
      const fate = el("span", "tag fate", node.fate.replace("_", " "));
      if (node.reason) fate.title = node.reason;
      cell.append(fate);
    }
    cell.append(el("span", "took", duration(node.duration_s)));
    return cell;
  }

  function track(node, span, now) {
    const cell = el("span", "track");
    const bar = el("span", "bar", null, {
      "data-level": node.level,
      "data-id": node.id,
      "data-status": node.status,
      "data-critical": node.critical ? "true" : "false",
    });
    bar.title = describe(node);
    const start = node.start_s;
    const end = endOf(node, now);
    if (start === null || end === null) {
      bar.classList.add("no-time");
    } else {
      place(bar, span, start, end);
      if (node.end_s === null) bar.classList.add("open");
    }
    const begin = queuedFrom(node);
    if (start !== null && begin !== null && begin < start) {
      const queue = el("span", "queue", null, { "data-queue-for": node.id });
      queue.title = `${node.name}: queued ${duration(start - begin)} before it ran`;
      place(queue, span, begin, start);
      cell.append(queue);
    }
    cell.append(bar);
    return cell;
  }

  function describe(node) {
    const lines = [`${node.level} ${node.name}`, `status: ${node.status}`];
    if (node.start) lines.push(`start: ${clock(node.start_s)}`);
    if (node.end) lines.push(`end: ${clock(node.end_s)}`);
    if (node.duration_s !== null) lines.push(`ran: ${duration(node.duration_s)}`);
    if (node.queue_time_ms) lines.push(`queued: ${duration(node.queue_time_ms / 1000)}`);
    if (node.error) lines.push(`error: ${node.error}`);
    lines.push(`fate: ${node.fate.replace("_", " ")}${node.reason ? ` (${node.reason})` : ""}`);
    if (node.critical) lines.push("on the critical path");
    return lines.join("\n");
  }

  function gridlines(span) {
    const layer = el("div", "gridlines", null, { "aria-hidden": "true" });
    for (const moment of tickMoments(span)) {
      const line = el("span", "gridline");
      line.style.left = `${percent(span, moment)}%`;
      layer.append(line);
    }
    return layer;
  }

  function ticks(span) {
    return tickMoments(span).map((moment) => {
      const offset = moment - span.from;
      const tick = el("span", "tick", offset < 1e-6 ? "0" : `+${offsetText(offset, span)}`);
      const at = percent(span, moment);
      tick.style.left = `${at}%`;
      if (at > 92) tick.classList.add("end"); // its label ends at its line, inside the axis
      return tick;
    });
  }

  // A tick's offset: "45 s", "2.5 s" within a minute; "1:30", "1:02:30" beyond.
  function offsetText(offset, span) {
    if (span.length < 60) return `${Number(offset.toFixed(1))} s`;
    const whole = Math.round(offset);
    const seconds = String(whole % 60).padStart(2, "0");
    if (whole < 3600) return `${Math.floor(whole / 60)}:${seconds}`;
    const minutes = String(Math.floor((whole % 3600) / 60)).padStart(2, "0");
    return `${Math.floor(whole / 3600)}:${minutes}:${seconds}`;
  }

  function tickMoments(span) {
    const step = TICK_STEPS_S.find((s) => span.length / s <= MAX_TICKS) || span.length / MAX_TICKS;
    const moments = [];
    for (let offset = 0; offset <= span.length + 1e-9; offset += step) moments.push(span.from + offset);
    return moments;
  }

  function showHeading(doc, rows) {
    const name = doc.name || "(unnamed pipeline)";
    document.title = `${name} · ci-relay`;
    document.getElementById("title").textContent = name;
    const summary = document.getElementById("summary");
    const names = new Map(rows.map(({ node }) => [node.id, node.name]));
    const path = doc.critical_path.map((id) => names.get(id) || id).join(" → ");
    const parts = [status(doc.status)];
    if (!doc.pipeline) parts.push(el("strong", null, "the pipeline's own event never arrived"));
    parts.push(el("span", null, `started ${clock(doc.start_s) || "—"}`));
    parts.push(el("span", null, `took ${duration(doc.duration_s) || "—"}`));
    parts.push(el("span", null, `${rows.length} events`));
    if (path) parts.push(el("span", "critical-path", `critical path: ${path}`));
    parts.push(el("code", null, doc.unique_id));
    summary.replaceChildren(...parts);
  }

  function showProblems(doc, rows) {
    const names = new Map(rows.map(({ node }) => [`${node.level}\u0000${node.id}`, node.name]));
    const items = doc.problems.map((problem) => {
      const item = el("li", "problem", null, {
        "data-rule": problem.rule,
        "data-level": problem.level,
        "data-id": problem.id,
      });
      const name = names.get(`${problem.level}\u0000${problem.id}`) || problem.id;
      item.append(el("code", null, problem.rule), el("span", "where", `${problem.level} ${name}`));
      item.append(el("span", "detail", problem.detail));
      return item;
    });
    document.getElementById("problems").replaceChildren(...items);
    document.getElementById("no-problems").hidden = items.length > 0;
  }

  poll();
})();
