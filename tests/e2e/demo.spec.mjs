// Browser end-to-end test of the trivia demo (gateway/static/demo/), driven by
// tests/system/test_demo_e2e.py, which starts the cluster and passes its addresses in
// ROOMCAST_E2E (JSON). It talks to pytest in JSON lines: it writes {"step": ...} lines on
// stdout, and when it needs replica A killed it writes {"need": "kill-a"} and waits for the
// line "killed" on stdin. Diagnostics go to stderr. Exit code 0 only if every check passed.
//
// Three isolated browser contexts: the host (replica A), Ada (replica B) and Grace (replica A);
// each page is given both gateway URLs (its own replica first) for failover.

import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { chromium } from "playwright-core";
import { LETTERS, questionFor } from "../../gateway/static/demo/questions.js";

const cfg = JSON.parse(process.env.ROOMCAST_E2E || "{}");
const T = Number(cfg.timeScale || 1);
const WAIT = 15000 * T;          // any single wait
const DEADLINE = 75000 * T;      // the whole run
const CHROMIUM = cfg.chromium || "/usr/bin/chromium";

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const log = (...a) => console.error(`[e2e ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
const t0 = Date.now();

// ---------------------------------------------------------------- stdin: commands from pytest
const lines = [];
const waiters = [];
let stdinClosed = false;
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => { const w = waiters.shift(); if (w) w(line.trim()); else lines.push(line.trim()); });
rl.on("close", () => { stdinClosed = true; for (const w of waiters.splice(0)) w(null); });
function nextLine(timeout) {
  if (lines.length) return Promise.resolve(lines.shift());
  if (stdinClosed) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no reply from pytest on stdin")), timeout);
    waiters.push((l) => { clearTimeout(timer); resolve(l); });
  });
}

// ---------------------------------------------------------------- checks
function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}
function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

// Only loopback: every request and WebSocket must go to 127.0.0.1.
const offLoopback = [];
const isLoopback = (url) => /^(https?|wss?):\/\/127\.0\.0\.1(:\d+)?\//.test(url) || /^(about:|data:)/.test(url);

const pageErrors = [];

async function newPlayerPage(browser, who, url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 860 }, serviceWorkers: "block" });
  await context.route("**/*", (route) => {
    const u = route.request().url();
    if (isLoopback(u)) return route.continue();
    offLoopback.push(u);
    return route.abort();
  });
  // Keep every connection state the page shows, to check that a failover is shown.
  await context.addInitScript(() => {
    window.__connStates = [];
    document.addEventListener("DOMContentLoaded", () => {
      const el = document.querySelector("#conn");
      if (!el) return;
      const note = () => { if (window.__connStates.at(-1) !== el.dataset.state) window.__connStates.push(el.dataset.state); };
      note();
      new MutationObserver(note).observe(el, { attributes: true, attributeFilter: ["data-state"] });
    });
  });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on("websocket", (ws) => { if (!isLoopback(ws.url())) offLoopback.push(ws.url()); });
  page.on("pageerror", (err) => { pageErrors.push(`${who}: ${err.message}`); log(`${who} page error:`, err.message); });
  page.on("console", (msg) => { if (msg.type() === "error" || msg.type() === "warning") log(`${who} console.${msg.type()}:`, msg.text()); });
  await page.goto(url);
  return { who, page, context };
}

// ---------------------------------------------------------------- what the pages show
const connState = (p) => p.page.locator("#conn").getAttribute("data-state");

async function waitConnected(p, nodeName) {
  await p.page.waitForFunction(([node]) => {
    const el = document.querySelector("#conn");
    return el.dataset.state === "connected" && (!node || el.textContent.includes(node));
  }, [nodeName || ""], { timeout: WAIT });
}

async function waitText(p, selector, text) {
  try {
    await p.page.waitForFunction(([sel, t]) => {
      const el = document.querySelector(sel);
      // innerText is the text as rendered (CSS may upper-case it): compare without case
      return !!el && el.offsetParent !== null && el.innerText.toLowerCase().includes(t.toLowerCase());
    }, [selector, text], { timeout: WAIT });
  } catch (err) {
    const shown = await p.page.locator(selector).innerText().catch(() => "?");
    throw new Error(`${p.who}: ${selector} never showed ${JSON.stringify(text)} (shows ${JSON.stringify(shown)})`);
  }
}

// The scoreboard as shown: the visible rows' cell texts.
async function shownScoreboard(p) {
  check(await p.page.locator("#scoreboard").isVisible(), `${p.who}: the scoreboard is visible`);
  return p.page.$$eval("#scoreboard tbody tr", (rows) => rows.map((tr) => [...tr.cells].map((td) => td.innerText.trim())));
}

async function waitScoreboard(p, expected) {
  const deadline = Date.now() + WAIT;
  let shown;
  while (Date.now() < deadline) {
    shown = await shownScoreboard(p);
    if (same(shown, expected)) return shown;
    await p.page.waitForTimeout(50);
  }
  throw new Error(`${p.who}: scoreboard shows ${JSON.stringify(shown)}, expected ${JSON.stringify(expected)}`);
}

// Everything a player sees in the game view (for the reload check).
async function shownState(p) {
  const text = async (sel) => (await p.page.locator(sel).innerText()).trim();
  return {
    code: await text("#code"),
    who: await text("#who"),
    phase: await text("#phase"),
    question: await text("#question"),
    choices: await p.page.$$eval("#choices button", (bs) => bs.map((b) => [b.innerText.replace(/\s+/g, " ").trim(), b.disabled, b.className, b.getAttribute("aria-pressed")])),
    status: await text("#answer-status"),
    scoreboard: await shownScoreboard(p),
  };
}

async function clickChoice(p, round, choice) {
  const q = questionFor(round);
  await waitText(p, "#question", q.text);
  await p.page.locator(`#choices button[data-choice="${choice}"]`).click();
  log(`${p.who} answers ${LETTERS[choice]} in round ${round}`);
}

async function hostClick(host, id) {
  const button = host.page.locator(id);
  await button.waitFor({ state: "visible" });
  await host.page.waitForFunction((sel) => !document.querySelector(sel).disabled, id, { timeout: WAIT });
  await button.click();
}

// ---------------------------------------------------------------- the game
async function run(browser) {
  const { a, b } = cfg;
  const demoUrl = (own, other) => `${own.http}/demo/?gw=${encodeURIComponent(own.ws)}&gw=${encodeURIComponent(other.ws)}`;

  const host = await newPlayerPage(browser, "host", demoUrl(a, b));
  await waitConnected(host, a.node);
  await host.page.locator("#host-btn").click();
  await host.page.waitForFunction(() => /^[A-Za-z0-9_-]{4,}$/.test(document.querySelector("#code").innerText.trim()));
  const code = (await host.page.locator("#code").innerText()).trim();
  check(await host.page.locator("#code").isVisible(), "the join code is shown");
  out({ step: "created", code });
  log("room", code);

  // Players join by the code the host page shows.
  const join = async (who, own, other) => {
    const p = await newPlayerPage(browser, who, demoUrl(own, other));
    await waitConnected(p, own.node);
    await p.page.locator("#join-code").fill(code);
    await p.page.locator("#join-name").fill(who);
    await p.page.locator("#join-btn").click();
    await waitText(p, "#code", code);
    return p;
  };
  const ada = await join("Ada", b, a);
  const grace = await join("Grace", a, b);
  const pages = [host, ada, grace];
  await waitScoreboard(host, [["1.", "Ada", "0"], ["1.", "Grace", "0"]]);
  out({ step: "joined" });

  // Round 1: Ada right, Grace wrong.
  let round = 1;
  await hostClick(host, "#next-btn");
  const q1 = questionFor(round);
  await clickChoice(ada, round, q1.answer);
  await clickChoice(grace, round, (q1.answer + 1) % 4);
  await waitText(host, "#answer-status", "2 of 2 players have answered.");
  await hostClick(host, "#reveal-btn");
  let expected = [["1.", "Ada", "1"], ["2.", "Grace", "0"]];
  for (const p of pages) await waitScoreboard(p, expected);
  await waitText(ada, "#answer-status", "Correct!");
  await waitText(grace, "#answer-status", "Not this time");
  out({ step: "round", round, scoreboard: expected });

  // Round 2: replica A (the host's and Grace's) is killed mid-round.
  round = 2;
  await hostClick(host, "#next-btn");
  const q2 = questionFor(round);
  for (const p of pages) await waitText(p, "#question", q2.text);
  out({ need: "kill-a" });
  const reply = await nextLine(WAIT);
  check(reply === "killed", `pytest killed replica A (got ${JSON.stringify(reply)})`);
  log("replica A killed");
  // Ada (on B) answers while the host is still failing over: the host must get her answer
  // replayed when it resumes on B.
  await clickChoice(ada, round, q2.answer);
  await waitConnected(host, b.node);
  await waitConnected(grace, b.node);
  log("host and Grace are back, on", b.node);
  for (const p of [host, grace]) {
    const states = await p.page.evaluate(() => window.__connStates);
    check(states.includes("reconnecting") || states.includes("offline"), `${p.who} showed the lost connection: ${states}`);
    check(states.at(-1) === "connected", `${p.who} shows connected again: ${states}`);
  }
  await waitText(host, "#answer-status", "1 of 2 players have answered.");
  await clickChoice(grace, round, q2.answer);
  await waitText(host, "#answer-status", "2 of 2 players have answered.");
  await waitText(ada, "#answer-status", "Locked in: " + LETTERS[q2.answer]);
  await hostClick(host, "#reveal-btn");
  expected = [["1.", "Ada", "2"], ["2.", "Grace", "1"]];
  for (const p of pages) await waitScoreboard(p, expected);
  out({ step: "round", round, scoreboard: expected, failover: true });

  // Round 3: Ada answers, then reloads her page mid-round: it must show the same state.
  round = 3;
  await hostClick(host, "#next-btn");
  const q3 = questionFor(round);
  await clickChoice(ada, round, q3.answer);
  await waitText(ada, "#answer-status", "Locked in: " + LETTERS[q3.answer]);
  const before = await shownState(ada);
  await ada.page.reload();
  await waitConnected(ada, b.node);
  await waitText(ada, "#answer-status", "Locked in: " + LETTERS[q3.answer]);
  const after = await shownState(ada);
  check(same(before, after), `Ada's page shows the same after a reload:\n before ${JSON.stringify(before)}\n after  ${JSON.stringify(after)}`);
  out({ step: "reload", same: true, state: after });
  await ada.page.screenshot({ path: cfg.screenshot.replace(/\.png$/, "-question.png") });
  await clickChoice(grace, round, (q3.answer + 2) % 4);
  await waitText(host, "#answer-status", "2 of 2 players have answered.");
  await hostClick(host, "#reveal-btn");
  expected = [["1.", "Ada", "3"], ["2.", "Grace", "1"]];
  for (const p of pages) await waitScoreboard(p, expected);
  await hostClick(host, "#end-btn");
  for (const p of pages) await waitText(p, "#phase", "Game over");

  const final = {};
  for (const p of pages) final[p.who] = await shownScoreboard(p);
  check(same(final.host, expected) && same(final.Ada, expected) && same(final.Grace, expected),
    `every page shows the same final scoreboard: ${JSON.stringify(final)}`);
  fs.mkdirSync(path.dirname(cfg.screenshot), { recursive: true });
  await host.page.screenshot({ path: cfg.screenshot, fullPage: true });
  await ada.page.screenshot({ path: cfg.screenshot.replace(/\.png$/, "-player.png"), fullPage: true });
  const conn = {};
  for (const p of pages) conn[p.who] = await connState(p);
  check(pageErrors.length === 0, `no page errors: ${pageErrors.join("; ")}`);
  check(offLoopback.length === 0, `only 127.0.0.1 was contacted: ${offLoopback.join(", ")}`);
  out({ step: "done", code, scoreboards: final, conn, screenshot: cfg.screenshot });
}

// ---------------------------------------------------------------- main
let browser = null;
async function closeBrowser() {
  if (!browser) return;
  const b = browser;
  browser = null;
  await Promise.race([b.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
}
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, async () => { await closeBrowser(); process.exit(1); });
}
const watchdog = setTimeout(async () => {
  log("deadline passed");
  out({ step: "error", error: `the browser test did not finish within ${DEADLINE / 1000}s` });
  await closeBrowser();
  process.exit(1);
}, DEADLINE);

let code = 1;
try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives every launch a fresh temporary --user-data-dir of its own.
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
  });
  log("chromium", browser.version());
  await run(browser);
  code = 0;
} catch (err) {
  log(err.stack || String(err));
  out({ step: "error", error: String(err.message || err) });
} finally {
  clearTimeout(watchdog);
  await closeBrowser();
  rl.close();
}
process.exit(code);
