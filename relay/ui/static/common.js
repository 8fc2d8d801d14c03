// What both pages share: reading the relay's JSON, formatting times, making elements.
"use strict";

window.CiRelay = (() => {
  const LOGIN = "/ui/login";

  // The JSON at `url` as parsed, or null when the relay wants a login (the page goes there).
  // A refusal or an unreachable relay throws an Error saying what went wrong.
  async function getJson(url) {
    const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    if (response.status === 401 || response.status === 403) {
      const here = location.pathname + location.search;
      location.assign(`${LOGIN}?next=${encodeURIComponent(here)}`);
      return null;
    }
    const text = await response.text();
    if (!response.ok) {
      throw new Error(detailOf(text) || `the relay answered ${response.status}`);
    }
    return { text, document: JSON.parse(text) };
  }

  // The first detail of Datadog's error shape, if the body is one.
  function detailOf(text) {
    try {
      const errors = JSON.parse(text).errors;
      return Array.isArray(errors) && errors.length ? String(errors[0].detail) : "";
    } catch {
      return "";
    }
  }

  // A document's text without its "now_s", to tell whether anything else changed.
  function contentKey(text) {
    return text.replace(/"now_s":[-0-9.eE+]+,?/, "");
  }

  function showDryRun(document_) {
    document.getElementById("dry-run").hidden = !document_.dry_run;
  }

  function showFailure(message) {
    const failure = document.getElementById("failure");
    failure.textContent = message ? `Cannot read the relay: ${message}` : "";
    failure.hidden = !message;
  }

  // "850 ms", "4.2 s", "38 s", "3 min 05 s", "2 h 07 min"; "" for null.
  function duration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
    const s = Math.max(0, seconds);
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 60) return `${Math.round(s)} s`;
    const whole = Math.round(s);
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${pad(whole % 60)} s`;
    return `${Math.floor(whole / 3600)} h ${pad(Math.floor((whole % 3600) / 60))} min`;
  }

  // Local "YYYY-MM-DD HH:MM:SS"; "" for null.
  function clock(epochSeconds) {
    if (epochSeconds === null || epochSeconds === undefined) return "";
    const d = new Date(epochSeconds * 1000);
    const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
    return `${day} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  // An element with a class, text and attributes (all set as text, never parsed as HTML).
  function el(tag, className, text, attributes) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined && text !== null) element.textContent = String(text);
    for (const [name, value] of Object.entries(attributes || {})) {
      element.setAttribute(name, String(value));
    }
    return element;
  }

  // A status pill.
  function status(value) {
    return el("span", "status", value, { "data-status": value });
  }

  // A link a CI provider gave, when it is one a browser should follow.
  function safeUrl(url) {
    return typeof url === "string" && /^https?:\/\//i.test(url) ? url : null;
  }

  return Object.freeze({ getJson, contentKey, showDryRun, showFailure, duration, clock, el, status, safeUrl });
})();
