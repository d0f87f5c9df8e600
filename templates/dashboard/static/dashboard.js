// The dashboard's pages: fetch the API's JSON with the session cookie and draw it.
// Plain browser JavaScript without a build step. Every text goes in with
// textContent, so no value from the API is parsed as HTML.
"use strict";

const COLORS = {
  background: "#ffffff",
  text: "#222222",
  bar: "#2f6fb3",
  // Step bars: sent, delivered, opened and clicked nested, then goal reached.
  steps: ["#d7e3f1", "#a9c4e3", "#6f9fd1", "#3f78b8", "#e08a2c"],
};
const FONT = "13px system-ui, sans-serif";
const ACTIONS = {
  call: "Call now",
  follow_up: "Follow up",
  wait_for_campaign: "Wait for the campaign",
  send_personal_email: "Send a personal email",
  enroll_in_campaign: "Enroll in a campaign",
  do_not_contact: "Do not contact",
  customer: "Customer",
  lost: "Lost",
};

class ApiProblem extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function getJson(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value) url.searchParams.set(name, value);
  }
  let response;
  try {
    response = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
  } catch (error) {
    throw new ApiProblem(0, `the API did not respond (${error.message}), so reload the page`);
  }
  if (!response.ok) {
    let message = response.statusText;
    try {
      const body = await response.json();
      // A 422 lists each invalid parameter with a message of its own.
      const details = (body.errors || []).map((error) => error.message);
      message = details.length ? details.join("; ") : body.message || message;
    } catch (_) {
      // Not our JSON error body, e.g. a proxy's page: keep the status text.
    }
    throw new ApiProblem(response.status, message);
  }
  return response.json();
}

function showError(element, subject, error) {
  element.hidden = false;
  element.replaceChildren();
  const status = error.status ? ` (HTTP ${error.status})` : "";
  element.append(`Could not load ${subject}: ${error.message}${status}. `);
  if (error.status === 401) {
    const link = document.createElement("a");
    link.href = `/dashboard/sign-in?next=${encodeURIComponent(location.pathname + location.search)}`;
    link.textContent = "Sign in again";
    element.append(link);
  }
}

function el(tag, text, className) {
  const element = document.createElement(tag);
  if (text !== undefined && text !== null) element.textContent = String(text);
  if (className) element.className = className;
  return element;
}

function percent(rate, digits = 1) {
  return rate === null || rate === undefined ? "–" : `${(rate * 100).toFixed(digits)}%`;
}

function ratio(part, whole) {
  return whole ? part / whole : null;
}

function formatTime(text) {
  return text ? `${text.slice(0, 16).replace("T", " ")} UTC` : "";
}

function rangeParams() {
  const data = document.body.dataset;
  return { from: data.from, to: data.to };
}

// Charts.

function prepareCanvas(canvas, height) {
  const scale = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  canvas.style.height = `${height}px`;
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  const context = canvas.getContext("2d");
  context.setTransform(scale, 0, 0, scale, 0, 0);
  context.fillStyle = COLORS.background;
  context.fillRect(0, 0, width, height);
  context.font = FONT;
  context.textBaseline = "middle";
  return { context, width };
}

// Horizontal bars, one per stage, each as long as its count over the largest.
function drawFunnel(canvas, stages) {
  const row = 30;
  const labelWidth = 100;
  const valueWidth = 120;
  const { context, width } = prepareCanvas(canvas, row * stages.length + 8);
  const longest = Math.max(1, ...stages.map((stage) => stage.value));
  const room = Math.max(width - labelWidth - valueWidth, 40);
  stages.forEach((stage, index) => {
    const middle = 4 + index * row + row / 2;
    const length = Math.round((room * stage.value) / longest);
    context.fillStyle = COLORS.text;
    context.fillText(stage.label, 0, middle);
    context.fillStyle = COLORS.bar;
    context.fillRect(labelWidth, Math.round(middle - 10), length, 20);
    context.fillStyle = COLORS.text;
    const rate = stage.rate === undefined ? "" : `  ${percent(stage.rate)}`;
    context.fillText(`${stage.value}${rate}`, labelWidth + length + 6, middle);
  });
  canvas.dataset.drawn = "true";
}

function funnelStages(counts) {
  return [
    { label: "Enrolled", value: counts.enrolled },
    { label: "Sent", value: counts.sent },
    { label: "Delivered", value: counts.delivered, rate: ratio(counts.delivered, counts.sent) },
    { label: "Opened", value: counts.opened, rate: ratio(counts.opened, counts.delivered) },
    { label: "Clicked", value: counts.clicked, rate: ratio(counts.clicked, counts.delivered) },
    { label: "Goal reached", value: counts.goalReached, rate: ratio(counts.goalReached, counts.enrolled) },
  ];
}

const COUNT_FIELDS = [
  "enrolled", "sent", "delivered", "opened", "clicked", "replied",
  "goalReached", "unsubscribed", "bounced",
];

// Add up the version rows of each campaign.
function campaignTotals(rows) {
  const totals = new Map();
  for (const row of rows.filter((r) => r.level === "version")) {
    const total = totals.get(row.campaignId) || Object.fromEntries(COUNT_FIELDS.map((f) => [f, 0]));
    for (const field of COUNT_FIELDS) total[field] += row[field];
    totals.set(row.campaignId, total);
  }
  return totals;
}

// The step chart's measures, in the order of its legend and of COLORS.steps.
// A lead can reach a goal without a click, so goal reached gets its own bar.
const STEP_MEASURES = [
  { field: "sent", label: "Sent" },
  { field: "delivered", label: "Delivered" },
  { field: "opened", label: "Opened" },
  { field: "clicked", label: "Clicked" },
  { field: "goalReached", label: "Goal reached" },
];

// One row per step and variant: nested bars of sent, delivered, opened and
// clicked, and under them a bar of goal reached. Every bar is a count, on one
// scale for all rows, so the rows compare.
function drawSteps(canvas, rows) {
  const row = 38;
  const labelWidth = 170;
  const legend = 24;
  // The sent bar is 20 px high, and each bar nested in it 2 px less at top and bottom.
  const nested = 20;
  const goal = 8;
  const { context, width } = prepareCanvas(canvas, legend + row * rows.length + 4);

  let x = 0;
  STEP_MEASURES.forEach((measure, index) => {
    context.fillStyle = COLORS.steps[index];
    context.fillRect(x, 6, 12, 12);
    context.fillStyle = COLORS.text;
    context.fillText(measure.label, x + 16, 12);
    x += context.measureText(measure.label).width + 34;
  });

  // Goal reached counts every pass through the step, sent or not, so it can exceed sent.
  const longest = Math.max(1, ...rows.map((r) => Math.max(r.sent, r.goalReached)));
  const room = Math.max(width - labelWidth - 60, 40);
  const length = (value) => Math.round((room * value) / longest);
  const goalLevel = STEP_MEASURES.length - 1;
  rows.forEach((step, index) => {
    const top = legend + index * row + 4;
    context.fillStyle = COLORS.text;
    const variant = step.variant ? ` · ${step.variant}` : "";
    context.fillText(`v${step.version} · ${step.step}${variant}`, 0, top + (nested + 2 + goal) / 2);

    STEP_MEASURES.slice(0, goalLevel).forEach((measure, level) => {
      const inset = level * 2;
      context.fillStyle = COLORS.steps[level];
      context.fillRect(labelWidth, top + inset, length(step[measure.field]), nested - 2 * inset);
    });
    // Goal reached goes 2 px under the sent bar, so it covers none of the others.
    const goalTop = top + nested + 2;
    context.fillStyle = COLORS.steps[goalLevel];
    context.fillRect(labelWidth, goalTop, length(step.goalReached), goal);

    context.fillStyle = COLORS.text;
    context.fillText(String(step.sent), labelWidth + length(step.sent) + 6, top + nested / 2);
    context.fillText(String(step.goalReached), labelWidth + length(step.goalReached) + 6, goalTop + goal / 2 + 1);
  });
  canvas.dataset.drawn = "true";
}

// The Wilson intervals of a split's variants, drawn on one 0 to max axis.
function intervalPlot(variants) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 420;
  const rowHeight = 22;
  const left = 60;
  const height = rowHeight * variants.length + 22;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Conversion rate with interval, per variant");
  const top = Math.max(0.05, ...variants.map((v) => v.ciHigh || 0));
  const scale = (value) => left + ((width - left - 20) * value) / top;
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  variants.forEach((variant, index) => {
    const y = 10 + index * rowHeight;
    add("text", { x: 0, y: y + 4, "font-size": 12, fill: COLORS.text }, variant.variant);
    if (variant.conversionRate === null) return;
    add("line", { x1: scale(variant.ciLow), x2: scale(variant.ciHigh), y1: y, y2: y, stroke: COLORS.bar, "stroke-width": 2 });
    add("circle", { cx: scale(variant.conversionRate), cy: y, r: 4, fill: variant.control ? COLORS.text : COLORS.bar });
  });
  const axis = height - 6;
  add("text", { x: left, y: axis, "font-size": 11, fill: COLORS.text }, "0%");
  add("text", { x: width - 60, y: axis, "font-size": 11, fill: COLORS.text }, percent(top));
  return svg;
}

// Pages.

async function campaignsPage() {
  const canvases = document.querySelectorAll("canvas.funnel[data-campaign]");
  if (!canvases.length) return;
  let report;
  try {
    report = await getJson("/api/v1/analytics/funnel", rangeParams());
  } catch (error) {
    showError(document.getElementById("load-error"), "the funnels", error);
    return;
  }
  const totals = campaignTotals(report.rows);
  for (const canvas of canvases) {
    const total = totals.get(canvas.dataset.campaign);
    if (!total) {
      canvas.hidden = true;
      document.querySelector(`[data-empty-for="${CSS.escape(canvas.dataset.campaign)}"]`).hidden = false;
      continue;
    }
    drawFunnel(canvas, funnelStages(total));
  }
}

function stepsTable(rows) {
  const body = document.querySelector("#steps-table tbody");
  body.replaceChildren();
  for (const step of rows) {
    const tr = document.createElement("tr");
    const cells = [
      `v${step.version} · ${step.stepNumber}. ${step.step}`, step.variant || "", step.channel || "",
      step.enrolled, step.sent, step.delivered,
      step.opened, percent(step.openRate), step.clicked, percent(step.clickRate),
      step.replied, step.goalReached, step.unsubscribed, step.bounced,
    ];
    cells.forEach((cell, index) => tr.append(el("td", cell, index >= 3 ? "number" : undefined)));
    body.append(tr);
  }
}

async function campaignFunnel(campaignId) {
  const chart = document.getElementById("funnel-chart");
  const steps = document.getElementById("steps");
  let report;
  try {
    report = await getJson("/api/v1/analytics/funnel", { ...rangeParams(), campaignId });
  } catch (error) {
    // The step by step section comes from the same report, so it shows the error too.
    chart.hidden = true;
    steps.hidden = true;
    showError(document.getElementById("funnel-error"), "the funnel", error);
    showError(document.getElementById("steps-error"), "the step by step funnel", error);
    return;
  }
  const total = campaignTotals(report.rows).get(campaignId);
  const stepRows = report.rows.filter((r) => r.level === "step");
  if (!total) {
    chart.hidden = true;
    document.getElementById("funnel-empty").hidden = false;
  } else {
    drawFunnel(chart, funnelStages(total));
  }
  // Without step rows, hide the chart's legend and the table header.
  if (!stepRows.length) {
    steps.hidden = true;
    document.getElementById("steps-empty").hidden = false;
    return;
  }
  drawSteps(document.getElementById("steps-chart"), stepRows);
  stepsTable(stepRows);
}

function decisionText(split) {
  const challengers = Math.max(split.variants.length - 1, 1);
  const decision = split.decision;
  if (decision && decision.withdrawnAt) {
    return `Winner ${decision.winner} was withdrawn by ${decision.withdrawnBy} at ${formatTime(decision.withdrawnAt)}: the split draws at random again, and its rule does not fire again.`;
  }
  if (decision) {
    const by = decision.decidedBy === "rule" ? "by the winner rule" : `by ${decision.decidedBy}`;
    return `Winner: ${decision.winner}, decided ${by} at ${formatTime(decision.decidedAt)} on version ${decision.campaignVersion}. New enrollments that reach this split take ${decision.winner}.`;
  }
  if (split.winnerRule) {
    const rule = split.winnerRule;
    return `No winner yet. The rule picks one once every variant has ${rule.minLeadsPerVariant} leads and a challenger differs from the control at significance ${split.significance} (divided among ${challengers} challenger${challengers > 1 ? "s" : ""}).`;
  }
  return `No winner rule: the split keeps drawing at random. Significance level ${split.significance}, divided among ${challengers} challenger${challengers > 1 ? "s" : ""}.`;
}

function significance(variant) {
  if (variant.control) return "";
  if (variant.significant === null) return "–";
  return variant.significant ? "yes" : "no";
}

// The meaning of the "By winner" column, for its tooltip and the note under the table.
const BY_WINNER = "By winner: the enrollments that a winner decision sent to this variant, and how many of them " +
  "converted, as converted / leads. The split did not draw them at random, so the test and the other columns " +
  "leave them out.";

function variantsTable(split, confidence) {
  const table = document.createElement("table");
  const head = document.createElement("tr");
  const level = `${Math.round(confidence * 100)}% interval`;
  for (const name of ["Variant", "Leads", "Converted", "Conversion", level, "vs control", "z", "p-value", "Significant"]) {
    head.append(el("th", name));
  }
  const byWinner = el("th", "By winner (converted / leads)");
  byWinner.title = BY_WINNER;
  head.append(byWinner);

  const thead = el("thead");
  thead.append(head);
  table.append(thead);
  const body = el("tbody");
  for (const variant of split.variants) {
    const tr = document.createElement("tr");
    const interval = variant.ciLow === null ? "–" : `${percent(variant.ciLow)} – ${percent(variant.ciHigh)}`;
    const difference = variant.difference === null ? "–" : `${variant.difference >= 0 ? "+" : ""}${(variant.difference * 100).toFixed(1)} pts`;
    const cells = [
      variant.variant + (variant.control ? " (control)" : ""),
      variant.assigned, variant.converted, percent(variant.conversionRate), interval,
      variant.control ? "" : difference,
      variant.zScore === null ? "–" : variant.zScore.toFixed(2),
      variant.pValue === null ? "–" : variant.pValue.toPrecision(3),
      significance(variant),
      `${variant.convertedByWinner} / ${variant.assignedByWinner}`,
    ];
    cells.forEach((cell, index) => tr.append(el("td", cell, index ? "number" : undefined)));
    body.append(tr);
  }
  table.append(body);
  return table;
}

function splitResult(split, confidence) {
  const article = el("article", null, "split");
  article.dataset.step = split.step;
  article.append(el("h3", `Split ${split.step} · control ${split.control}`));
  const inForce = split.decision && !split.decision.withdrawnAt;
  article.append(el("p", decisionText(split), inForce ? "decision winner" : "decision"));
  const wrap = el("div", null, "table-wrap");
  wrap.append(variantsTable(split, confidence));
  article.append(wrap);
  if (split.variants.some((variant) => variant.conversionRate !== null)) {
    article.append(intervalPlot(split.variants));
  }
  article.append(el("p", BY_WINNER, "hint by-winner"));
  return article;
}

async function campaignSplits(campaignId) {
  const confidence = Number(document.body.dataset.confidence) || 0.95;
  let report;
  try {
    report = await getJson("/api/v1/analytics/ab", { ...rangeParams(), campaignId, confidence });
  } catch (error) {
    showError(document.getElementById("ab-error"), "the A/B results", error);
    return;
  }
  const results = document.getElementById("ab-results");
  results.replaceChildren(...report.splits.map((split) => splitResult(split, confidence)));
  const reached = report.splits.some((split) => split.variants.some((v) => v.assigned + v.assignedByWinner > 0));
  if (!reached && !document.getElementById("ab-no-split")) {
    document.getElementById("ab-empty").hidden = false;
  }
  document.getElementById("ab-method").textContent = report.method;
}

async function campaignPage() {
  const campaignId = document.body.dataset.campaign;
  await Promise.all([campaignFunnel(campaignId), campaignSplits(campaignId)]);
}

function renderReasons(reasons) {
  const list = document.getElementById("reasons");
  list.replaceChildren();
  for (const reason of reasons) {
    const item = el("li");
    const points = Number(reason.points);
    item.append(el("span", `${points >= 0 ? "+" : ""}${points}`, "points"), " ", reason.fact || reason.criterion);
    item.append(el("span", ` ${reason.dimension || ""} · ${reason.criterion || ""}`, "meta"));
    list.append(item);
  }
  document.getElementById("reasons-empty").hidden = reasons.length > 0;
}

function renderLead(lead) {
  const contact = lead.contact || {};
  const name = [contact.firstName, contact.lastName].filter(Boolean).join(" ") || contact.email || lead.id;
  document.getElementById("lead-name").textContent = name;
  document.title = `${name} · nurture`;
  const company = lead.company && lead.company.name ? `${lead.company.name} · ` : "";
  const source = lead.source && lead.source.channel ? ` · from ${lead.source.channel}` : "";
  document.getElementById("lead-meta").textContent =
    `${company}${contact.email || contact.phone || ""} · ${lead.stage} · ${lead.status}${source}`;
  document.getElementById("score").textContent = lead.score;
  const meta = [];
  // Reasons such as "last activity 5 minutes ago" count from the scoring time.
  if (lead.scoredAt) meta.push(`Scored ${formatTime(lead.scoredAt)}; the ages below count from then.`);
  if (lead.conversionProbability !== null && lead.conversionProbability !== undefined) {
    meta.push(`Model: ${percent(lead.conversionProbability)} chance to convert.`);
  }
  document.getElementById("score-meta").textContent = meta.join(" ");
  renderReasons(lead.scoreReasons || []);
}

function renderEnrollment(enrollment) {
  const card = el("article", null, "enrollment");
  card.append(el("h3", `${enrollment.campaignName} · version ${enrollment.version} · ${enrollment.status}${enrollment.paused ? " (paused)" : ""}`));
  const parts = [];
  if (enrollment.currentStep) parts.push(`at step ${enrollment.currentStep}`);
  // nextStep is the step that acts at nextStepDueAt: the current step itself
  // while it waits (a delay, quiet hours), else the step after it.
  const due = enrollment.nextStepDueAt ? ` until ${formatTime(enrollment.nextStepDueAt)}` : "";
  if (enrollment.nextStep && enrollment.nextStep === enrollment.currentStep) parts.push(`waiting${due}`);
  else if (enrollment.nextStep) parts.push(`next: ${enrollment.nextStep}${enrollment.nextStepDueAt ? ` at ${formatTime(enrollment.nextStepDueAt)}` : ""}`);
  if (enrollment.waitingReason) parts.push(enrollment.waitingReason);
  if (enrollment.goal) parts.push(`goal reached: ${enrollment.goal}`);
  if (parts.length) card.append(el("p", parts.join(" · "), "meta"));
  const steps = el("ol", null, "timeline");
  for (const step of enrollment.steps || []) {
    const item = el("li");
    item.append(el("time", formatTime(step.at)), " ", el("strong", step.step), ` ${step.status}`);
    if (step.messageStatus) item.append(` · message ${step.messageStatus}`);
    if (step.detail) item.append(el("span", ` · ${step.detail}`, "meta"));
    steps.append(item);
  }
  if (!steps.children.length) steps.append(el("li", "No step recorded yet.", "empty"));
  card.append(steps);
  return card;
}

function renderJourney(journey) {
  const action = journey.nextAction;
  document.getElementById("next-action").textContent = ACTIONS[action.action] || action.action;
  document.getElementById("next-action").dataset.action = action.action;
  document.getElementById("next-reason").textContent = ` — ${action.reason}`;
  document.getElementById("score").textContent = journey.score;
  if (journey.reasons && journey.reasons.length) renderReasons(journey.reasons);
  const container = document.getElementById("journey");
  container.replaceChildren(...journey.enrollments.map(renderEnrollment));
  document.getElementById("journey-empty").hidden = journey.enrollments.length > 0;
  const engagement = document.getElementById("engagement");
  engagement.replaceChildren();
  for (const event of journey.recentEngagement) {
    const item = el("li");
    const url = event.detail && event.detail.url ? ` ${event.detail.url}` : "";
    item.append(el("time", formatTime(event.at)), ` ${event.type}${url} (${event.source})`);
    engagement.append(item);
  }
  document.getElementById("engagement-empty").hidden = journey.recentEngagement.length > 0;
}

function renderMessages(messages) {
  const body = document.querySelector("#messages tbody");
  body.replaceChildren();
  for (const message of messages) {
    const tr = document.createElement("tr");
    for (const cell of [formatTime(message.sentAt || message.createdAt), message.channel, message.template, message.subject || "", message.status]) {
      tr.append(el("td", cell));
    }
    body.append(tr);
  }
  document.getElementById("messages-empty").hidden = messages.length > 0;
  // The table, header included, shows only with a row in it.
  document.getElementById("messages-wrap").hidden = messages.length === 0;
}

async function leadPage() {
  const base = `/api/v1/leads/${encodeURIComponent(document.body.dataset.lead)}`;
  const [lead, journey, messages] = await Promise.allSettled([
    getJson(base), getJson(`${base}/journey`), getJson(`${base}/messages`),
  ]);
  if (lead.status === "fulfilled") renderLead(lead.value);
  else showError(document.getElementById("lead-error"), "the lead", lead.reason);
  if (journey.status === "fulfilled") renderJourney(journey.value);
  else {
    document.getElementById("next-action").textContent = "";
    showError(document.getElementById("journey-error"), "the journey", journey.reason);
  }
  if (messages.status === "fulfilled") renderMessages(messages.value);
  else showError(document.getElementById("messages-error"), "the messages", messages.reason);
  document.body.dataset.loaded = "true";
}

const PAGES = { campaigns: campaignsPage, campaign: campaignPage, lead: leadPage };

document.addEventListener("DOMContentLoaded", () => {
  const page = PAGES[document.body.dataset.page];
  if (page) page();
});
