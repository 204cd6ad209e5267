// roomcast trivia demo. Plain ES module, no build step.
//
// Design: the host is the referee and the only writer of the room's game_data; every page
// (the host's too) renders ONLY from game_data. game_data changes only through the host's
// update_room patches, which reach every member as `state_change` events in seq order, so every
// page folds the same patches in the same order and shows the same scoreboard. A page that
// resumes gets the missed patches replayed; a page that cannot (`reset`, or a fresh join after a
// reload) takes game_data from the snapshot, which is the fold of the same patches.
//
// game_data = {
//   phase: "lobby" | "question" | "reveal" | "over",
//   round: n,                                   // the current question's number (0 in the lobby)
//   question: { round, text, choices },         // no answer in it: the host knows it from the bank
//   players: { deviceId: name },                // recorded by the host from `player` events
//   answers: { [round]: { deviceId: choice } }, // first answer per player, recorded by the host
//   reveal: { round, answer } | null,           // set when the host reveals
//   scores: { deviceId: points },               // the authoritative scoreboard, set at each reveal
// }
// Players send `player {name}` and `answer {round, choice}` events; the host records them into
// game_data (only answers for the open round, the first one per player). At a reveal the host
// writes reveal, the round's final answers and the new scores in ONE patch, so a scoreboard is
// never seen without the answers that explain it. Players re-send what the host has not recorded
// yet (after a failover or a host reload), and the host ignores repeats.

import { RoomcastClient } from "/lib/roomcast.js";
import { LETTERS, questionFor } from "/demo/questions.js";

const POINTS = 1;                    // per correct answer
const SAVE_KEY = "roomcast-trivia";  // {code, role, name, answer} of this tab's game, for reloads
const RETRY_MS = 2000;               // re-send what the host has not recorded after this long

const $ = (id) => document.getElementById(id);
// Per tab: two tabs of one browser are two players, and a reload keeps the tab's identity.
const store = window.sessionStorage;

const app = {
  client: null,
  room: null,
  me: null,           // this device's id
  node: null,         // the gateway replica we are connected to
  conn: "connecting",
  role: null,         // "host" | "player"
  name: "",
  code: "",
  gd: {},             // game_data as of the last processed event
  status: "waiting",  // room status
  lastSeq: 0,
  presence: new Map(), // deviceId -> {role, online}
  myAnswer: null,     // {round, choice, sentAt}: a player's answer not yet recorded by the host
  nameSentAt: 0,
  // host only
  inputs: { names: {}, answers: {} }, // what players asked for, not yet (or already) recorded
  busy: false,        // a host action or a recording patch is on its way
  awaitSeq: 0,        // don't act again until the echo of our last patch has been processed
  revealing: 0,       // round being revealed: no more answers are recorded for it
};

// ------------------------------------------------------------------ helpers

function gatewayUrls() {
  const params = new URLSearchParams(location.search);
  const urls = params.getAll("gw").filter((u) => /^wss?:\/\/[^\s]+$/.test(u));
  if (urls.length) return urls;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return [`${proto}//${location.host}/ws`];
}

// JSON Merge Patch (RFC 7386), as the gateway applies it to game_data.
function mergePatch(target, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const out = target && typeof target === "object" && !Array.isArray(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

const clone = (v) => JSON.parse(JSON.stringify(v ?? {}));
const isHost = () => app.role === "host";
const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0); // code-unit order: the same in every browser

function save() {
  if (!app.code) return store.removeItem(SAVE_KEY);
  const answer = app.myAnswer && { round: app.myAnswer.round, choice: app.myAnswer.choice };
  store.setItem(SAVE_KEY, JSON.stringify({ code: app.code, role: app.role, name: app.name, answer }));
}

function showError(text) {
  const el = $("error");
  el.textContent = text || "";
  el.hidden = !text;
}

function describe(err) {
  const code = err && (err.code || err.name);
  switch (code) {
    case "not_found": return "There is no room with that code. Check it and try again.";
    case "room_full": return "That room is full.";
    case "room_closed": return "That game is over: the room is closed.";
    case "forbidden": return "The gateway refused that (" + (err.message || "forbidden") + ").";
    default: return (err && err.message) || String(err);
  }
}

// Who plays: everyone with a name in game_data but the current host.
function playerDevs(gd = app.gd) {
  return Object.keys(gd.players || {}).filter((dev) => app.presence.get(dev)?.role !== "host");
}

function nameOf(dev, gd = app.gd) {
  return (gd.players && gd.players[dev]) || "Player " + String(dev).slice(-4);
}

// The scoreboard: a pure function of game_data, ordered by points, then name, then device id.
export function scoreboard(gd) {
  const devs = new Set([...Object.keys(gd.players || {}), ...Object.keys(gd.scores || {})]);
  const rows = [...devs].map((dev) => ({ dev, name: nameOf(dev, gd), points: (gd.scores && gd.scores[dev]) || 0 }));
  rows.sort((a, b) => b.points - a.points || cmp(a.name, b.name) || cmp(a.dev, b.dev));
  let rank = 0;
  rows.forEach((row, i) => { rank = i > 0 && rows[i - 1].points === row.points ? rank : i + 1; row.rank = rank; });
  return rows;
}

function winners(gd) {
  const rows = scoreboard(gd).filter((r) => r.rank === 1 && r.points > 0);
  if (!rows.length) return "Game over. Thanks for playing!";
  const names = rows.map((r) => r.name);
  const list = names.length === 1 ? names[0] : names.slice(0, -1).join(", ") + " and " + names.at(-1);
  const pts = `${rows[0].points} point${rows[0].points === 1 ? "" : "s"}`;
  return names.length === 1 ? `${list} wins with ${pts}!` : `${list} share the win with ${pts}!`;
}

// ------------------------------------------------------------------ connection

function setConn(state) {
  app.conn = state;
  const el = $("conn");
  el.dataset.state = state;
  const where = app.node ? ` · ${app.node}` : "";
  $("conn-text").textContent = {
    connecting: "Connecting…",
    connected: "Connected" + where,
    reconnecting: "Reconnecting…",
    offline: "Offline",
  }[state] || state;
}

function normaliseState(s) {
  const name = typeof s === "string" ? s : s && (s.state || s.status);
  if (!name) return null;
  if (/^(open|connected|ready|online)$/i.test(name)) return "connected";
  if (/reconnect|backoff|retry/i.test(name)) return "reconnecting";
  if (/close|offline|disconnect|fail|stop/i.test(name)) return "offline";
  if (/connect|opening|hello|welcom/i.test(name)) return "connecting";
  return null;
}

function makeClient() {
  const client = new RoomcastClient({
    url: gatewayUrls()[0],
    urls: gatewayUrls(),
    storage: store,
    requestTimeoutMs: 8000,
    maxQueue: 100,
    backoff: { initialMs: 200, maxMs: 3000 },
  });
  client.on("welcome", (w) => {
    if (w && w.device_id) app.me = w.device_id;
    if (w && w.node) app.node = w.node;
    setConn(app.conn); // show the replica's name
  });
  client.on("open", () => { setConn("connected"); retryPending(true); render(); });
  client.on("reconnecting", () => setConn("reconnecting"));
  client.on("close", () => { if (app.conn === "connected") setConn("reconnecting"); });
  client.on("error", (e) => console.warn("roomcast:", e));
  client.on("state", (s) => {
    const state = normaliseState(s);
    if (state) setConn(state);
    if (state === "connected") retryPending(true);
  });
  return client;
}

// ------------------------------------------------------------------ the room

function attach(room, role) {
  Object.assign(app, { busy: false, awaitSeq: 0, revealing: 0, inputs: { names: {}, answers: {} } });
  app.room = room;
  app.role = room.role || role;
  app.code = room.id;
  app.me = app.me || app.client.deviceId || null;
  loadSnapshot(room.state);
  const current = () => app.room === room; // not a room this page has left since
  room.on("event", (e) => { if (current()) onEvent(e); });
  room.on("reset", (snapshot) => {
    if (!current()) return;
    // The missed events are gone: rebuild everything from the snapshot.
    loadSnapshot(room.state || (snapshot && (snapshot.room || snapshot)));
    render();
  });
  room.on("closed", () => {
    if (!current()) return;
    app.status = "closed";
    store.removeItem(SAVE_KEY); // nothing to come back to after a reload
    render();
  });
  save();
  showView("game");
  render();
  if (!isHost()) retryPending(true);
}

function loadSnapshot(state) {
  state = state || {};
  app.gd = clone(state.game_data);
  app.status = state.status || app.status;
  app.lastSeq = Math.max(app.room ? app.room.seq || 0 : 0, state.seq || 0);
  app.presence = new Map();
  for (const p of (app.room && app.room.participants) || []) {
    app.presence.set(p.device_id, { role: p.role, online: p.status !== "disconnected" });
  }
}

function onEvent(e) {
  if (!e) return;
  const type = e.event_type || e.type;
  const payload = e.payload || {};
  const from = e.from && e.from.device_id;
  if (typeof e.seq === "number") app.lastSeq = Math.max(app.lastSeq, e.seq);
  switch (type) {
    case "state_change":
      if (payload.patch) app.gd = mergePatch(app.gd, payload.patch);
      if (payload.status) app.status = payload.status;
      break;
    case "participant_joined":
    case "participant_reconnected":
      app.presence.set(payload.device_id, { role: payload.role, online: true });
      break;
    case "participant_disconnected":
      app.presence.set(payload.device_id, { role: payload.role, online: false });
      break;
    case "participant_left":
      app.presence.delete(payload.device_id);
      break;
    case "room_closed":
      app.status = "closed";
      break;
    case "host_changed":
      // The host left or was pruned: the gateway made the longest-present player host. If that
      // is this page, it becomes the referee (everything it needs is in game_data).
      app.presence.set(payload.device_id, { role: "host", online: true });
      if (payload.device_id === app.me && app.role !== "host") {
        app.role = "host";
        app.myAnswer = null;
        save();
      }
      break;
    case "player":
      if (isHost() && from && typeof payload.name === "string") {
        const name = payload.name.trim().slice(0, 24);
        if (name) app.inputs.names[from] = name;
      }
      break;
    case "answer":
      if (isHost() && from) hostTakeAnswer(from, payload);
      break;
    default:
      break;
  }
  if (isHost()) queueMicrotask(hostRecord);
  render();
}

// ------------------------------------------------------------------ host

function hostTakeAnswer(dev, p) {
  const gd = app.gd;
  const round = gd.round;
  if (dev === app.me || gd.phase !== "question" || p.round !== round || app.revealing === round) return;
  if (!Number.isInteger(p.choice) || p.choice < 0 || p.choice >= LETTERS.length) return;
  const role = app.presence.get(dev)?.role;
  if (role && role !== "player") return;
  const recorded = gd.answers && gd.answers[round] && gd.answers[round][dev];
  const taken = (app.inputs.answers[round] ||= {});
  if (recorded === undefined && taken[dev] === undefined) taken[dev] = p.choice;
}

// One host patch at a time; the next waits for the echo of the previous one, so the host
// always decides on game_data that already contains its own earlier decisions.
// Recording (quiet) is retried by the timer; a failed host action is reported.
async function hostUpdate(update, quiet = false) {
  app.busy = true;
  render();
  try {
    const seq = await app.room.update(update);
    if (typeof seq === "number") app.awaitSeq = Math.max(app.awaitSeq, seq);
    if (!quiet) showError("");
    return true;
  } catch (err) {
    if (!quiet) showError("Could not update the room: " + describe(err) + " Try again.");
    return false;
  } finally {
    app.busy = false;
    render();
    setTimeout(hostRecord, 0);
  }
}

const hostReady = () => isHost() && app.room && !app.busy && app.lastSeq >= app.awaitSeq;

// Record into game_data the names and answers the players sent that it does not hold yet.
function hostRecord() {
  if (!hostReady()) return;
  const gd = app.gd;
  const patch = {};
  const players = {};
  const scores = {};
  for (const [dev, name] of Object.entries(app.inputs.names)) {
    if (!gd.players || gd.players[dev] !== name) players[dev] = name;
    if (!gd.scores || gd.scores[dev] === undefined) scores[dev] = 0;
  }
  if (Object.keys(players).length) patch.players = players;
  if (Object.keys(scores).length) patch.scores = scores;
  const round = gd.round;
  if (gd.phase === "question" && app.revealing !== round) {
    const have = (gd.answers && gd.answers[round]) || {};
    const add = {};
    for (const [dev, choice] of Object.entries(app.inputs.answers[round] || {})) {
      if (have[dev] === undefined) add[dev] = choice;
    }
    if (Object.keys(add).length) patch.answers = { [round]: add };
  }
  if (Object.keys(patch).length) hostUpdate({ patch }, true);
}

async function askNext() {
  if (!hostReady() || app.gd.phase === "question") return;
  const round = (app.gd.round || 0) + 1;
  const q = questionFor(round);
  const patch = { phase: "question", round, question: { round, text: q.text, choices: q.choices }, reveal: null };
  if (round > 1) patch.answers = { [round - 1]: null }; // keep game_data small: only this round's answers
  showError("");
  await hostUpdate({ status: "in_progress", patch });
}

async function reveal() {
  const gd = app.gd;
  if (!hostReady() || gd.phase !== "question") return;
  const round = gd.round;
  const q = questionFor(round);
  app.revealing = round; // from now on no answer is recorded for this round
  const answers = { ...(app.inputs.answers[round] || {}), ...((gd.answers && gd.answers[round]) || {}) };
  const scores = { ...(gd.scores || {}) };
  for (const dev of Object.keys(gd.players || {})) if (scores[dev] === undefined) scores[dev] = 0;
  for (const [dev, choice] of Object.entries(answers)) {
    scores[dev] = (scores[dev] || 0) + (choice === q.answer ? POINTS : 0);
  }
  // reveal, the final answers and the new scoreboard in one patch: every page sees them together
  const ok = await hostUpdate({ patch: { phase: "reveal", reveal: { round, answer: q.answer }, answers: { [round]: answers }, scores } });
  if (!ok) app.revealing = 0;
}

async function endGame() {
  if (!hostReady() || app.gd.phase === "question") return;
  await hostUpdate({ status: "completed", patch: { phase: "over" } });
}

// ------------------------------------------------------------------ player

async function sendName() {
  app.nameSentAt = Date.now();
  try { await app.room.send("player", { name: app.name }); } catch { /* re-sent by retryPending */ }
}

async function answer(choice) {
  const gd = app.gd;
  if (isHost() || gd.phase !== "question" || lockedIn()) return;
  if (app.myAnswer && app.myAnswer.round === gd.round) return; // one answer per round
  app.myAnswer = { round: gd.round, choice, sentAt: Date.now() };
  save();
  render();
  try { await app.room.send("answer", { round: gd.round, choice }); } catch { /* re-sent by retryPending */ }
}

function lockedIn() {
  const a = app.gd.answers && app.gd.answers[app.gd.round];
  return a && app.me && a[app.me] !== undefined ? a[app.me] : undefined;
}

// Re-send what the host has not recorded yet (it may have been offline, or reloaded).
function retryPending(now = false) {
  if (isHost() || !app.room || app.conn !== "connected") return;
  const t = Date.now();
  const gd = app.gd;
  if (app.name && app.me && (!gd.players || gd.players[app.me] !== app.name) && (now || t - app.nameSentAt > RETRY_MS)) {
    sendName();
  }
  const mine = app.myAnswer;
  if (mine && gd.phase === "question" && mine.round === gd.round && lockedIn() === undefined && (now || t - mine.sentAt > RETRY_MS)) {
    mine.sentAt = t;
    app.room.send("answer", { round: mine.round, choice: mine.choice }).catch(() => {});
  }
}

// ------------------------------------------------------------------ rendering

function showView(which) {
  $("view-start").hidden = which !== "start";
  $("view-game").hidden = which !== "game";
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function render() {
  if (!app.room) return;
  const gd = app.gd;
  const phase = gd.phase || "lobby";
  const round = gd.round || 0;
  const q = gd.question && gd.question.round === round ? gd.question : null;
  const revealed = phase === "reveal" || phase === "over" ? gd.reveal && gd.reveal.round === round ? gd.reveal : null : null;
  const answers = (gd.answers && gd.answers[round]) || {};
  const players = playerDevs(gd);
  const closed = app.status === "closed";

  document.title = `${app.code} · roomcast trivia`;
  $("code").textContent = app.code;
  $("who").textContent = isHost() ? "You are the host." : `You are playing as ${app.name || nameOf(app.me)}.`;
  const share = new URL(location.href);
  share.search = "";
  for (const gw of new URLSearchParams(location.search).getAll("gw")) share.searchParams.append("gw", gw);
  share.searchParams.set("room", app.code);
  $("share").hidden = !isHost();
  $("share-link").href = share.href;
  $("share-link").textContent = `${share.origin}${share.pathname}?room=${app.code}`;

  // stage
  const phaseText = closed ? "The room is closed"
    : phase === "lobby" ? (isHost() ? `Waiting for players… (${players.length} joined)` : "Waiting for the host to start…")
    : phase === "question" ? `Question ${round}`
    : phase === "reveal" ? `Question ${round}: the answer`
    : "Game over";
  $("phase").textContent = phaseText;
  $("question").textContent = q && phase !== "over" ? q.text : phase === "over" ? winners(gd) : "";

  const mine = lockedIn();
  const pending = app.myAnswer && app.myAnswer.round === round ? app.myAnswer.choice : undefined;
  const chosen = mine !== undefined ? mine : pending;
  const counts = {};
  for (const c of Object.values(answers)) counts[c] = (counts[c] || 0) + 1;
  const choices = $("choices");
  choices.replaceChildren();
  if (q && (phase === "question" || phase === "reveal")) {
    q.choices.forEach((text, i) => {
      const cls = ["choice"];
      if (revealed && i === revealed.answer) cls.push("correct");
      else if (revealed && i === chosen) cls.push("wrong");
      const canPress = !isHost() && phase === "question" && chosen === undefined && app.conn === "connected";
      const count = isHost() && revealed ? el("span", { class: "count" }, `${counts[i] || 0} ✓`) : null;
      choices.append(el("button", {
        type: "button", class: cls.join(" "), dataset: { choice: String(i) },
        "aria-pressed": !isHost() ? String(chosen === i) : null,
        disabled: !canPress, onclick: () => answer(i),
      }, el("span", { class: "letter", "aria-hidden": "true" }, LETTERS[i]), el("span", {}, text), count));
    });
  }

  // status line under the choices
  const status = $("answer-status");
  status.className = "answer-status";
  let text = "";
  if (isHost()) {
    if (phase === "question") text = `${Object.keys(answers).length} of ${players.length} players have answered.`;
    else if (revealed) {
      const got = Object.values(answers).filter((c) => c === revealed.answer).length;
      text = `${phase === "over" ? "Last answer" : "Answer"}: ${LETTERS[revealed.answer]} · ${q ? q.choices[revealed.answer] : ""}. ${got} of ${players.length} got it.`;
    }
  } else if (phase === "question") {
    if (mine !== undefined) text = `Locked in: ${LETTERS[mine]}. Waiting for the host to reveal…`;
    else if (pending !== undefined) text = `Sending ${LETTERS[pending]}…`;
    else text = "Pick an answer.";
  } else if (revealed) {
    const got = answers[app.me];
    const right = `${LETTERS[revealed.answer]} · ${q ? q.choices[revealed.answer] : ""}`;
    if (got === undefined) { text = `You did not answer. It was ${right}.`; status.classList.add("bad"); }
    else if (got === revealed.answer) { text = `Correct! ${right}. +${POINTS}`; status.classList.add("ok"); }
    else { text = `Not this time: it was ${right}.`; status.classList.add("bad"); }
  }
  status.textContent = text && phase === "over" && !isHost() ? "Last question: " + text : text;

  // host controls
  const controls = $("host-controls");
  controls.hidden = !isHost() || closed;
  if (isHost()) {
    const ready = hostReady() && app.conn === "connected";
    $("next-btn").hidden = phase === "question" || phase === "over";
    $("next-btn").textContent = round === 0 ? "Ask the first question" : "Ask the next question";
    $("next-btn").disabled = !ready || (phase === "lobby" && players.length === 0);
    $("reveal-btn").hidden = phase !== "question";
    $("reveal-btn").disabled = !ready;
    $("end-btn").hidden = phase !== "reveal";
    $("end-btn").disabled = !ready;
  }

  // scoreboard
  const rows = scoreboard(gd);
  $("scoreboard").querySelector("tbody").replaceChildren(...rows.map((r) => el("tr", {
    class: r.dev === app.me ? "me" : null, dataset: { device: r.dev },
  }, el("td", {}, `${r.rank}.`), el("td", {}, r.name), el("td", {}, String(r.points)))));
  $("score-empty").hidden = rows.length > 0;

  // who is in the room (presence is live; names come from game_data)
  const list = $("players");
  const items = [];
  const order = ([da, pa], [db, pb]) => (pb.role === "host") - (pa.role === "host") || cmp(nameOf(da), nameOf(db)) || cmp(da, db);
  for (const [dev, p] of [...app.presence.entries()].sort(order)) {
    if (p.role === "spectator") continue;
    const label = (p.role === "host" ? "Host" : nameOf(dev)) + (dev === app.me ? " (you)" : "");
    const answered = phase === "question" && answers[dev] !== undefined;
    items.push(el("li", { class: p.online ? "online" : "away" },
      el("span", { class: "dot", "aria-hidden": "true" }), el("span", {}, label),
      answered ? el("span", { class: "tick", title: "answered" }, " ✓") : null,
      el("span", { class: "tag" }, p.online ? "online" : "away")));
  }
  list.replaceChildren(...items);
}

// ------------------------------------------------------------------ start-up

async function enter(action, role) {
  showError("");
  try {
    const room = await action();
    attach(room, role);
    return true;
  } catch (err) {
    showError(describe(err));
    return false;
  }
}

async function main() {
  setConn("connecting");
  const params = new URLSearchParams(location.search);
  const roomParam = params.get("room");
  if (roomParam) $("join-code").value = roomParam.toUpperCase();

  $("host-btn").addEventListener("click", async () => {
    $("host-btn").disabled = true;
    app.name = "";
    await enter(() => app.client.createRoom({
      gameType: "trivia", maxPlayers: 50,
      gameData: { phase: "lobby", round: 0, players: {}, scores: {}, answers: {} },
    }), "host");
    $("host-btn").disabled = false;
  });
  $("join-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const code = $("join-code").value.trim().toUpperCase();
    const name = $("join-name").value.trim().slice(0, 24);
    if (!code || !name) return;
    $("join-btn").disabled = true;
    app.name = name;
    await enter(() => app.client.join(code, { role: "player" }), "player");
    $("join-btn").disabled = false;
  });
  $("next-btn").addEventListener("click", askNext);
  $("reveal-btn").addEventListener("click", reveal);
  $("end-btn").addEventListener("click", endGame);
  $("leave-btn").addEventListener("click", async () => {
    const room = app.room;
    Object.assign(app, { room: null, code: "", role: null, gd: {}, myAnswer: null, presence: new Map() });
    save();
    showView("start");
    if (room) try { await room.leave(); } catch { /* gone anyway */ }
  });

  app.client = makeClient();
  setInterval(() => { retryPending(); if (isHost()) hostRecord(); }, 500);
  try {
    await app.client.connect();
    setConn("connected");
  } catch (err) {
    setConn("offline");
    showError("Cannot reach the game server: " + describe(err));
  }
  app.me = app.me || app.client.deviceId || null;

  // A reload: go back to the game this tab was in.
  const saved = JSON.parse(store.getItem(SAVE_KEY) || "null");
  if (saved && saved.code) {
    app.name = saved.name || "";
    if (saved.answer) app.myAnswer = { ...saved.answer, sentAt: 0 };
    try {
      // a rejoin keeps this device's role (host or player)
      attach(await app.client.join(saved.code, { role: "player" }), saved.role);
      return;
    } catch (err) {
      showError(describe(err));
      app.myAnswer = null;
      if (["not_found", "room_closed", "forbidden"].includes(err && err.code)) store.removeItem(SAVE_KEY);
      $("join-code").value = saved.code;
      $("join-name").value = app.name;
    }
  }
  showView("start");
}

main();
