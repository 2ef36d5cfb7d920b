// chattune web chat: streams replies from /v1/chat/completions (OpenAI SSE) and sends feedback to /api/feedback.
// Model output is untrusted: it is only ever written with textContent, never as HTML.
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

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = "message " + role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "you" : "bot";
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
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
  const turn = { role: "assistant", content: "" };
  const box = addMessage("assistant", "");
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
    if (turn.content || box.dataset.replyId) {
      messages.push(turn);
      addActions(box, turn);
    } else {
      messages.pop();  // nothing came back: let the user resend
    }
  }
}

async function streamReply(box, messages, turn, signal) {
  const system = $("#system").value.trim();
  const request = {
    model: $("#model").dataset.id || undefined,
    messages: system ? [{ role: "system", content: system }, ...messages] : messages,
    temperature: Number($("#temperature").value),
    max_tokens: Number($("#max-tokens").value),
    stream: true,
    metadata: { conversation_id: state.conversationId },
  };
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
      content.textContent = turn.content;
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
    box.querySelector(".content").textContent = edited;
    box.dataset.edited = "true";
    box.querySelector(".note").textContent = "edited";
    editor.remove();
    row.remove();
  });
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
