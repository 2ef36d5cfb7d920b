// chattune web chat: streams replies from /v1/chat/completions (OpenAI SSE) and sends feedback to /api/feedback.
// Model output is untrusted: it reaches the page only as text nodes (markdown.js builds the elements), never as HTML.
// Sampling settings start from the server's defaults (GET /api/defaults); an emptied field sends nothing, so the
// server's default applies.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { messages: [], conversationId: newId(), controller: null };

function newId() {
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
}

function headers() {
  const key = $("#api-key").value.trim();
  return { "Content-Type": "application/json", ...(key ? { Authorization: "Bearer " + key } : {}) };
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? { headers: headers() }
    : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) {
    const error = await response.json().catch(() => null);
    const hint = response.status === 401 ? " (set the API key in Settings)" : "";
    throw new Error((error && error.error ? error.error.message : response.statusText) + hint);
  }
  return response;
}

function showStatus(text) {
  $("#status").textContent = text;
}

// User text is shown as typed; replies are rendered as markdown.
function showText(content, role, text) {
  if (role === "user") content.textContent = text;
  else content.replaceChildren(...markdown.render(text));
}

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = "message " + role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "you" : "bot";
  const content = document.createElement("div");
  content.className = "content";
  showText(content, role, text);
  box.append(label, content);
  $("#messages").append(box);
  box.scrollIntoView({ block: "end" });
  return box;
}

// --- sending and streaming ---------------------------------------------------------------------------------------

async function send(text) {
  showStatus("");
  const messages = state.messages;  // "New chat" during the reply starts a new list; this reply stays in its own
  messages.push({ role: "user", content: text });
  addMessage("user", text);
  document.querySelectorAll(".regenerate").forEach((button) => { button.disabled = true; });  // older context
  const box = addMessage("assistant", "");
  if (!await reply(box, messages)) messages.pop();  // nothing came back: let the user resend
}

// A new reply to the same conversation, stored by the server as a sibling of the shown one (thumbs on both
// give a preference pair in `chattune feedback export --format dpo`); the conversation goes on from the new one.
async function regenerate(oldBox, oldTurn) {
  const messages = state.messages;
  if (!$("#stop").hidden || messages[messages.length - 1] !== oldTurn) return;
  showStatus("");
  messages.pop();
  oldBox.dataset.superseded = "true";
  oldBox.querySelector(".regenerate").disabled = true;
  const box = addMessage("assistant", "");
  oldBox.after(box);
  if (!await reply(box, messages)) {  // nothing came back: the old reply is the conversation's again
    messages.push(oldTurn);
    delete oldBox.dataset.superseded;
    oldBox.querySelector(".regenerate").disabled = false;
  }
}

// Stream a reply to `messages` into `box`; true if it got a reply (even a stopped one), which joins `messages`.
async function reply(box, messages) {
  const turn = { role: "assistant", content: "" };
  box.dataset.state = "streaming";
  setBusy(true);
  state.controller = new AbortController();
  try {
    await streamReply(box, messages, turn, state.controller.signal);
    box.dataset.state = "done";
  } catch (error) {
    box.dataset.state = error.name === "AbortError" ? "stopped" : "error";
    if (error.name !== "AbortError") showStatus(error.message);
  } finally {
    setBusy(false);
  }
  if (!turn.content && !box.dataset.replyId) return false;
  messages.push(turn);
  addActions(box, turn);
  return true;
}

async function streamReply(box, messages, turn, signal) {
  const system = $("#system").value.trim();
  const request = {
    model: $("#model").dataset.id || undefined,
    messages: system ? [{ role: "system", content: system }, ...messages] : messages,
    stream: true,
    metadata: { conversation_id: state.conversationId },
  };
  const temperature = $("#temperature").value, maxTokens = $("#max-tokens").value;
  if (temperature !== "") request.temperature = Number(temperature);
  if (maxTokens !== "") request.max_tokens = Number(maxTokens);
  const response = await fetch("/v1/chat/completions",
    { method: "POST", headers: headers(), body: JSON.stringify(request), signal });
  if (!response.ok) {
    const error = await response.json().catch(() => null);
    throw new Error(error && error.error ? error.error.message : response.statusText);
  }
  const content = box.querySelector(".content");
  for await (const chunk of serverSentEvents(response)) {
    if (chunk.error) throw new Error(chunk.error.message);
    box.dataset.replyId = chunk.id;
    const choice = chunk.choices[0];
    if (!choice) continue;
    if (choice.delta.content) {
      turn.content += choice.delta.content;
      showText(content, "assistant", turn.content);
      box.scrollIntoView({ block: "end" });
    }
    if (choice.finish_reason === "length") box.dataset.cut = "true";
  }
}

async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function setBusy(busy) {
  $("#send").hidden = busy;
  $("#stop").hidden = !busy;
  $("#prompt").disabled = busy;
  if (!busy) $("#prompt").focus();
}

// --- feedback ----------------------------------------------------------------------------------------------------

function addActions(box, turn) {
  const actions = $("#reply-actions").content.firstElementChild.cloneNode(true);
  const note = actions.querySelector(".note");
  note.textContent = box.dataset.state === "stopped" ? "stopped" : box.dataset.cut ? "cut at max tokens" : "";
  if (!box.dataset.replyId) {
    box.append(actions);
    actions.querySelectorAll("button").forEach((button) => { button.disabled = true; });
    return;
  }
  actions.querySelector(".rate-up").addEventListener("click", () => rate(box, 1));
  actions.querySelector(".rate-down").addEventListener("click", () => rate(box, -1));
  actions.querySelector(".edit").addEventListener("click", () => startEdit(box, turn));
  actions.querySelector(".regenerate").addEventListener("click", () => regenerate(box, turn));
  actions.querySelector(".copy").addEventListener("click", () => copy(actions.querySelector(".copy"), turn.content));
  box.append(actions);
}

async function rate(box, rating) {
  const current = Number(box.dataset.rating || 0);
  const next = current === rating ? 0 : rating;  // clicking the pressed thumb again clears it
  try {
    await api("/api/feedback", { reply_id: box.dataset.replyId, rating: next });
    box.dataset.rating = String(next);
    box.querySelector(".rate-up").setAttribute("aria-pressed", String(next === 1));
    box.querySelector(".rate-down").setAttribute("aria-pressed", String(next === -1));
  } catch (error) {
    showStatus("feedback not saved: " + error.message);
  }
}

function startEdit(box, turn) {
  if (box.querySelector(".edit-box")) return;
  const editor = document.createElement("textarea");
  editor.className = "edit-box";
  editor.value = turn.content;
  const save = document.createElement("button");
  save.type = "button";
  save.className = "save-edit";
  save.textContent = "Save edit";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.textContent = "Cancel";
  const row = document.createElement("div");
  row.className = "actions edit-row";
  row.append(save, cancel);
  box.querySelector(".actions").before(editor, row);
  editor.focus();
  cancel.addEventListener("click", () => { editor.remove(); row.remove(); });
  save.addEventListener("click", async () => {
    const edited = editor.value.trim();
    if (!edited) return;
    try {
      await api("/api/feedback", { reply_id: box.dataset.replyId, edited });
    } catch (error) {
      showStatus("edit not saved: " + error.message);
      return;
    }
    if (!box.dataset.original) {
      box.dataset.original = turn.content;
      const original = document.createElement("div");
      original.className = "original";
      original.textContent = turn.content;
      box.querySelector(".content").before(original);
    }
    turn.content = edited;  // the conversation continues from the reply the user wanted
    showText(box.querySelector(".content"), "assistant", edited);
    box.dataset.edited = "true";
    box.querySelector(".note").textContent = "edited";
    editor.remove();
    row.remove();
  });
}

// The reply's text as the model wrote it (markdown source). The clipboard API needs a secure context (https or
// localhost); over plain http on a network the page falls back to selecting a hidden textarea.
async function copy(button, text) {
  try {
    if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(text);
    else copyBySelection(text);
    button.textContent = "Copied";
  } catch (error) {
    showStatus("not copied: " + error.message);
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

function copyBySelection(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("the browser refused");
}

// --- page wiring -------------------------------------------------------------------------------------------------

function newChat() {
  if (state.controller) state.controller.abort();
  state.messages = [];
  state.conversationId = newId();
  $("#messages").replaceChildren();
  showStatus("");
  $("#prompt").focus();
}

async function loadModel() {
  try {
    const models = await (await api("/v1/models")).json();
    const defaults = await (await api("/api/defaults")).json();
    $("#temperature").value = defaults.temperature;
    $("#max-tokens").value = defaults.max_tokens;
    $("#max-tokens").max = defaults.max_tokens_cap;
    $("#model").textContent = models.data[0].id;
    $("#model").dataset.id = models.data[0].id;
  } catch (error) {
    $("#model").textContent = "";
    showStatus(error.message);
  }
}

$("#composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("#prompt").value.trim();
  if (!text || state.controller && !$("#stop").hidden) return;
  $("#prompt").value = "";
  send(text);
});
$("#prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("#composer").requestSubmit();
  }
});
$("#stop").addEventListener("click", () => state.controller && state.controller.abort());
$("#new-chat").addEventListener("click", newChat);
$("#api-key").value = localStorage.getItem("chattune-api-key") || "";
$("#api-key").addEventListener("change", () => {
  localStorage.setItem("chattune-api-key", $("#api-key").value.trim());
  loadModel();
});
loadModel();
