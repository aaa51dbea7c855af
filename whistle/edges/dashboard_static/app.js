// whistle dashboard: one script for every page (body[data-page]). Data from /api/* (same origin only).
(function () {
  "use strict";
  const body = document.body;
  const PAGE = body.dataset.page, LANG = body.dataset.lang, T = window.WHISTLE_I18N[LANG];
  const TZ = "Asia/Shanghai";
  const params = new URLSearchParams(location.search);
  const state = { reference: null, charts: {} };
  window.whistle = state; // for the browser test and for curious auditors

  function t(key, vars) {
    let text = T[key] !== undefined ? T[key] : key;
    for (const [k, v] of Object.entries(vars || {})) text = text.replace("{" + k + "}", v);
    return text;
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  function withLang(path, extra) {
    const q = new URLSearchParams(extra || {});
    if (LANG === "en") q.set("lang", "en");
    const s = q.toString();
    return s ? path + (path.includes("?") ? "&" : "?") + s : path;
  }
  async function api(path, query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query || {})) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
    const url = q.toString() ? path + "?" + q : path;
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("401"); }
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }
  const fmtTime = new Intl.DateTimeFormat(LANG === "en" ? "en-GB" : "zh-CN", { timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false });
  function when(ms) { return ms === null || ms === undefined ? "" : fmtTime.format(new Date(Number(ms))); }
  function unitName(id) {
    if (id === null || id === undefined || id === "") return "";
    const ref = state.reference; const name = ref && ref.units[id];
    return name ? name : id;
  }
  function gridName(id) { const g = state.reference && state.reference.grids[id]; return g ? g.name : id; }
  function categoryName(code) {
    const c = state.reference && state.reference.categories.find((x) => x.code === code);
    return c ? (LANG === "en" ? code : c.name) : code;
  }
  function display(value) { return value === null || value === undefined ? "" : String(value); }
  function cell(value, shown) { return el("td", { "data-value": display(value), text: shown === undefined ? display(value) : shown }); }
  function error(where, exc) { where.replaceChildren(el("p", { class: "error", text: t("error") + ": " + exc.message })); }
  function chart(id, height) {
    const node = el("div", { id, class: "chart", style: "height:" + (height || 360) + "px" });
    return node;
  }
  function mount(node) {
    const instance = echarts.init(node, null, { renderer: "canvas" });
    instance.setOption({ animationDuration: 250, animationDurationUpdate: 250 });
    state.charts[node.id] = instance;
    window.addEventListener("resize", () => instance.resize());
    return instance;
  }
  const FONT = { fontFamily: "WenQuanYi Micro Hei, Noto Sans CJK SC, Microsoft YaHei, sans-serif" };

  // -- chrome --------------------------------------------------------------------------------------
  document.getElementById("brand").textContent = t("brand");
  document.getElementById("user").textContent = body.dataset.user;
  document.getElementById("logout").textContent = t("logout");
  document.getElementById("logout-form").setAttribute("action", "/logout");
  const other = new URLSearchParams(location.search);
  if (LANG === "en") other.delete("lang"); else other.set("lang", "en");
  const langLink = document.getElementById("lang-switch");
  langLink.textContent = t("other_lang");
  langLink.href = location.pathname + (other.toString() ? "?" + other : "");
  const nav = document.getElementById("nav");
  for (const [path, page] of [["/", "overview"], ["/ranking", "ranking"], ["/map", "map"], ["/cases", "cases"], ["/export", "export"]]) {
    nav.append(el("a", { href: withLang(path), class: page === PAGE ? "active" : null, id: "nav-" + page, text: t(page) }));
  }
  const main = document.getElementById("main");
  const monthDefault = params.get("month") || body.dataset.month;

  // -- overview ------------------------------------------------------------------------------------
  async function overview() {
    const month = el("input", { type: "month", id: "month", value: monthDefault });
    const out = el("div", { id: "overview" });
    main.append(el("h1", { text: t("overview") }), el("div", { class: "controls" }, el("label", { text: t("month") }, month),
      el("button", { id: "load", text: t("load"), onclick: () => load() })), out);
    async function load() {
      out.replaceChildren(el("p", { class: "muted", text: "…" }));
      let data;
      try { data = await api("/api/overview", { month: month.value }); } catch (exc) { return error(out, exc); }
      state.overview = data;
      const cur = data.current.rows[0] || {}, prev = data.previous.rows[0] || {};
      const cards = el("div", { class: "cards" });
      for (const key of ["opened", "resolved", "closed", "response_rate_pct", "resolution_rate_pct", "on_time_rate_pct", "satisfaction_rate_pct"]) {
        const rate = key.endsWith("_pct");
        const value = cur[key], before = prev[key];
        let delta = "";
        if (value !== null && value !== undefined && before !== null && before !== undefined) {
          const d = Number(value) - Number(before);
          delta = (d > 0 ? "▲ " : d < 0 ? "▼ " : "＝ ") + (rate ? Math.abs(d).toFixed(2) + " pt" : Math.abs(d));
        }
        cards.append(el("div", { class: "card", id: "card-" + key, "data-value": display(value) },
          el("div", { class: "label", text: t(key) }),
          el("div", { class: "value", text: value === null || value === undefined ? t("no_data") : display(value) + (rate ? "%" : "") }),
          el("div", { class: "delta", text: delta ? t("vs_prev") + " " + delta + " (" + data.previous_month + ": " + display(before) + ")" : "" })));
      }
      const tiers = ["grid", "community", "street", "department", "supervision", "discipline"];
      const byTier = Object.fromEntries(data.breaches_current.rows.map((r) => [r.tier, r]));
      const prevTier = Object.fromEntries(data.breaches_previous.rows.map((r) => [r.tier, r]));
      const chartNode = chart("breach-chart", 320);
      const tableNode = el("table", { id: "breach-table" }, el("thead", {}, el("tr", {}, [t("tier"), t("warnings"), t("breaches"), t("referrals"), t("vs_prev")].map((h) => el("th", { text: h })))),
        el("tbody", {}, tiers.filter((tier) => byTier[tier] || prevTier[tier]).map((tier) => {
          const r = byTier[tier] || { warnings: 0, breaches: 0, referrals: 0 }, p = prevTier[tier] || { warnings: 0, breaches: 0, referrals: 0 };
          const d = (r.breaches + r.referrals) - (p.breaches + p.referrals);
          return el("tr", { "data-tier": tier }, cell(tier, T.tiers[tier] || tier), cell(r.warnings), cell(r.breaches), cell(r.referrals),
            el("td", { text: (d > 0 ? "▲ " : d < 0 ? "▼ " : "＝ ") + Math.abs(d) }));
        })));
      out.replaceChildren(cards, el("p", { class: "muted", text: t("cohort_note") }), el("h2", { text: t("breaches_by_tier") }),
        el("div", { class: "split" }, chartNode, tableNode),
        el("p", {}, el("a", { href: withLang("/api/export/overview.csv", { month: month.value }), text: "CSV" }), " · ",
          el("a", { href: withLang("/api/export/breach_summary.csv", { month: month.value }), text: t("breach_summary_table") + " CSV" })));
      const instance = mount(chartNode);
      instance.setOption({
        textStyle: FONT, tooltip: { trigger: "axis" }, legend: { data: [t("warnings"), t("breaches"), t("referrals")] },
        xAxis: { type: "category", data: tiers.map((x) => T.tiers[x]) }, yAxis: { type: "value", minInterval: 1 },
        series: ["warnings", "breaches", "referrals"].map((k, i) => ({ name: t(k), type: "bar", data: tiers.map((x) => (byTier[x] ? byTier[x][k] : 0)),
          itemStyle: { color: ["#f5b041", "#e74c3c", "#7d3c98"][i] } })),
      });
    }
    await load();
  }

  // -- ranking -------------------------------------------------------------------------------------
  const RANK_COLUMNS = ["rank", "unit_id", "received", "response_rate_pct", "resolution_rate_pct", "on_time_rate_pct", "satisfaction_rate_pct",
    "avg_accept_s", "p90_accept_s", "avg_resolve_h", "p90_resolve_h", "breaches_total"];
  async function ranking() {
    const month = el("input", { type: "month", id: "month", value: monthDefault });
    const by = el("select", { id: "by" }, ["street", "department"].map((u) => el("option", { value: u, text: t(u), selected: (params.get("by") || "street") === u })));
    const minCases = el("input", { type: "number", id: "min-cases", min: "0", value: params.get("min_cases") || String(state.reference.min_cases) });
    const out = el("div", { id: "ranking" });
    main.append(el("h1", { text: t("ranking") }), el("div", { class: "controls" }, el("label", { text: t("month") }, month), el("label", { text: t("by") }, by),
      el("label", { text: t("min_cases") }, minCases), el("button", { id: "load", text: t("load"), onclick: () => load() })), out);
    let sortKey = "rank", sortDir = 1;
    async function load() {
      out.replaceChildren(el("p", { class: "muted", text: "…" }));
      let data;
      try { data = await api("/api/ranking", { month: month.value, by: by.value, min_cases: minCases.value }); } catch (exc) { return error(out, exc); }
      state.ranking = data;
      render();
    }
    function render() {
      const data = state.ranking;
      const rows = data.ranking.rows.slice();
      const numeric = (v) => (v === null || v === undefined ? null : Number(v));
      rows.sort((a, b) => {
        if (sortKey === "unit_id") return sortDir * String(a.unit_id).localeCompare(String(b.unit_id));
        const x = numeric(a[sortKey]), y = numeric(b[sortKey]);
        if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
        return sortDir * (x - y);
      });
      const head = el("tr", {}, RANK_COLUMNS.map((c) => el("th", { "data-column": c, class: "sortable" + (c === sortKey ? (sortDir > 0 ? " asc" : " desc") : ""),
        text: t(c), onclick: () => { sortDir = c === sortKey ? -sortDir : 1; sortKey = c; render(); } })));
      const tbody = el("tbody", {}, rows.map((r) => el("tr", { "data-unit": r.unit_id, class: r.rank === null ? "unranked" : null },
        RANK_COLUMNS.map((c) => c === "unit_id" ? cell(r.unit_id, unitName(r.unit_id)) : c === "rank" ? cell(r.rank, r.rank === null ? t("unranked") : display(r.rank)) : cell(r[c])))));
      const ranked = data.ranking.rows.filter((r) => r.rank !== null);
      const chartNode = chart("ranking-chart", 380);
      const prov = el("div", { id: "provenance", class: "panel", hidden: true });
      const provButton = el("button", { id: "show-provenance", text: t("provenance"), onclick: () => {
        prov.hidden = !prov.hidden; provButton.textContent = prov.hidden ? t("provenance") : t("hide"); } });
      const pc = ["source_table", "kafka_topic", "kafka_partition", "min_offset", "max_offset", "row_count", "policy_versions"];
      prov.append(el("p", { text: t("provenance_note") }), el("table", { id: "provenance-table" }, el("thead", {}, el("tr", {}, pc.map((c) => el("th", { text: t(c) })))),
        el("tbody", {}, data.provenance.rows.map((r) => el("tr", {}, pc.map((c) => cell(r[c])))))));
      const q = { month: data.month, by: data.by, min_cases: data.min_cases };
      out.replaceChildren(el("p", { class: "rule", id: "min-rule", text: t("min_rule", { n: data.min_cases }) }), chartNode,
        el("div", { class: "controls" }, provButton, el("a", { href: withLang("/api/export/ranking.csv", q), id: "export-ranking-csv", text: "CSV" }),
          el("a", { href: withLang("/api/export/provenance.csv", q), text: t("provenance") + " CSV" }),
          el("a", { href: withLang("/api/export/ranking.xlsx", q), id: "export-ranking-xlsx", text: "Excel" })),
        prov, el("table", { id: "ranking-table" }, el("thead", {}, head), tbody));
      const instance = mount(chartNode);
      const series = ["resolution_rate_pct", "satisfaction_rate_pct", "response_rate_pct", "on_time_rate_pct"];
      instance.setOption({
        textStyle: FONT, tooltip: { trigger: "axis" }, legend: { data: series.map((s) => t(s)) }, grid: { bottom: 90 },
        xAxis: { type: "category", data: ranked.map((r) => unitName(r.unit_id)), axisLabel: { rotate: 30, interval: 0 } },
        yAxis: { type: "value", max: 100, axisLabel: { formatter: "{value}%" } },
        series: series.map((s, i) => ({ id: s, name: t(s), type: "bar", data: ranked.map((r) => (r[s] === null ? null : Number(r[s]))),
          itemStyle: { color: ["#1f618d", "#27ae60", "#f39c12", "#8e44ad"][i] } })),
      });
      instance.__unitIds = ranked.map((r) => r.unit_id);
    }
    await load();
  }

  // -- map -----------------------------------------------------------------------------------------
  async function gridMap() {
    const colorBy = el("select", { id: "color-by" }, ["open_cases", "overdue_cases"].map((k) => el("option", { value: k, text: t(k) })));
    const from = el("input", { type: "date", id: "from", value: params.get("from") || "" });
    const to = el("input", { type: "date", id: "to", value: params.get("to") || "" });
    const chartNode = chart("grid-map", 640);
    const list = el("div", { id: "grid-case-list" });
    main.append(el("h1", { text: t("map") }), el("div", { class: "controls" }, el("label", { text: t("color_by") }, colorBy),
      el("label", { text: t("period_from") }, from), el("label", { text: t("period_to") }, to), el("button", { id: "load", text: t("load"), onclick: () => load() }),
      el("span", { class: "muted", text: t("map_hint") })), el("div", { class: "split map" }, chartNode, list));
    const geo = await api("/api/grids");
    for (const f of geo.features) f.properties.key = f.properties.grid_id || f.properties.area_id;
    echarts.registerMap("whistle-district", geo);
    state.geo = geo;
    const instance = mount(chartNode);
    instance.on("click", (event) => { if (event.data && event.data.grid) showGrid(event.data.grid); });
    async function load() {
      let data;
      try { data = await api("/api/map", { from: from.value, to: to.value }); } catch (exc) { return error(list, exc); }
      state.map = data;
      const byGrid = Object.fromEntries(data.rows.map((r) => [r.grid_id, r]));
      const key = colorBy.value;
      const grids = geo.features.filter((f) => f.properties.kind === "grid");
      const values = grids.map((f) => {
        const r = byGrid[f.properties.grid_id] || { open_cases: 0, overdue_cases: 0, total_cases: 0 };
        return { name: f.properties.key, grid: f.properties.grid_id, value: r[key], open: r.open_cases, overdue: r.overdue_cases, total: r.total_cases, label: f.properties.name };
      });
      const max = Math.max(1, ...values.map((v) => v.value));
      instance.setOption({
        textStyle: FONT,
        tooltip: { trigger: "item", formatter: (p) => p.data ? `${p.data.label}<br>${p.data.grid}<br>${t("open_cases")}: ${p.data.open}<br>${t("overdue_cases")}: ${p.data.overdue}<br>${t("total_cases")}: ${p.data.total}` : p.name },
        visualMap: { min: 0, max, left: 10, bottom: 20, text: [String(max), "0"], calculable: true, inRange: { color: key === "open_cases" ? ["#eaf2f8", "#2e86c1", "#1b2631"] : ["#fdedec", "#e74c3c", "#641e16"] } },
        series: [{ id: "grids", name: t(key), type: "map", map: "whistle-district", nameProperty: "key", roam: true, selectedMode: false,
          label: { show: false }, emphasis: { label: { show: true, formatter: (p) => (p.data ? p.data.label : "") } },
          itemStyle: { borderColor: "#555", borderWidth: 0.5, areaColor: "#f4f6f6" }, data: values }],
      }, true);
    }
    async function showGrid(grid) {
      list.replaceChildren(el("p", { class: "muted", text: "…" }));
      try {
        const data = await api("/api/cases", { grid, from: from.value, to: to.value });
        list.replaceChildren(el("h2", { id: "grid-title", text: t("grid_cases") + " " + gridName(grid) + " (" + grid + ")" }), caseTable(data.rows, true));
      } catch (exc) { error(list, exc); }
    }
    await load();
  }

  // -- cases ---------------------------------------------------------------------------------------
  function caseTable(rows, compact) {
    const cols = compact ? ["case_id", "status", "category", "opened_ms", "assignee_unit_id", "overdue"]
      : ["case_id", "status", "category", "urgency", "street", "grid", "opened_ms", "resolved_ms", "assignee_unit_id", "rating", "escalations", "overdue"];
    return el("div", {}, el("p", { class: "muted", text: t("found", { n: rows.length }) }), el("table", { id: "case-table" },
      el("thead", {}, el("tr", {}, cols.map((c) => el("th", { text: t(c) })))),
      el("tbody", {}, rows.map((r) => el("tr", { "data-case": r.case_id, class: "clickable", onclick: () => { location.href = withLang("/cases", { case: r.case_id }); } },
        cols.map((c) => {
          if (c === "case_id") return el("td", { "data-value": r.case_id }, el("a", { href: withLang("/cases", { case: r.case_id }), text: r.case_id }));
          if (c === "status") return cell(r.status, T.statuses[r.status] || r.status);
          if (c === "urgency") return cell(r.urgency, T.urgencies[r.urgency] || r.urgency);
          if (c === "category") return cell(r.category, categoryName(r.category));
          if (c === "street") return cell(r.street_id, unitName(r.street_id));
          if (c === "grid") return cell(r.grid_id, r.grid_id ? gridName(r.grid_id) : "");
          if (c.endsWith("_ms")) return cell(r[c], when(r[c]));
          if (c === "assignee_unit_id") return cell(r[c], unitName(r[c]));
          if (c === "overdue") return cell(r.overdue, r.overdue ? "⚠ " + r.overdue : "");
          return cell(r[c]);
        }))))));
  }
  async function cases() {
    const ref = state.reference;
    const f = {
      case_id: el("input", { id: "q-case", placeholder: t("case_id"), value: params.get("case_id") || "" }),
      street: el("select", { id: "q-street" }, el("option", { value: "", text: t("all") }), ref.streets.map((s) => el("option", { value: s.id, text: s.name }))),
      grid: el("input", { id: "q-grid", list: "grid-ids", placeholder: t("grid"), value: params.get("grid") || "" }),
      category: el("select", { id: "q-category" }, el("option", { value: "", text: t("all") }), ref.categories.map((c) => el("option", { value: c.code, text: LANG === "en" ? c.code : c.name }))),
      status: el("select", { id: "q-status" }, el("option", { value: "", text: t("all") }), ref.statuses.map((s) => el("option", { value: s, text: T.statuses[s] || s }))),
      from: el("input", { id: "q-from", type: "date" }), to: el("input", { id: "q-to", type: "date" }),
    };
    const grids = el("datalist", { id: "grid-ids" }, Object.entries(ref.grids).map(([id, g]) => el("option", { value: id, text: g.name })));
    const results = el("div", { id: "case-results" });
    const timeline = el("div", { id: "timeline" });
    const form = el("form", { class: "controls", id: "case-search", onsubmit: (e) => { e.preventDefault(); search(); } },
      f.case_id, el("label", { text: t("street") }, f.street), f.grid, grids, el("label", { text: t("category") }, f.category),
      el("label", { text: t("status") }, f.status), el("label", { text: t("period_from") }, f.from), el("label", { text: t("period_to") }, f.to),
      el("button", { id: "search", type: "submit", text: t("search") }));
    const exportLink = el("a", { id: "export-cases", text: "CSV" });
    main.append(el("h1", { text: t("cases") }), form, el("p", {}, exportLink), results, timeline);
    async function search() {
      const q = Object.fromEntries(Object.entries(f).map(([k, v]) => [k, v.value.trim()]));
      exportLink.href = withLang("/api/export/cases.csv", Object.fromEntries(Object.entries(q).filter(([, v]) => v)));
      try {
        const data = await api("/api/cases", q);
        state.cases = data;
        results.replaceChildren(caseTable(data.rows, false));
        if (q.case_id && data.rows.length === 1) showCase(data.rows[0].case_id);
      } catch (exc) { error(results, exc); }
    }
    async function showCase(caseId) {
      timeline.replaceChildren(el("p", { class: "muted", text: "…" }));
      let data;
      try { data = await api("/api/case/" + encodeURIComponent(caseId)); } catch (exc) { return error(timeline, exc); }
      state.timeline = data;
      const ok = data.chain.verified;
      const cols = ["time", "event", "actor", "holder", "reason", "rating", "chain", "position"];
      timeline.replaceChildren(
        el("h2", { id: "timeline-title", text: t("timeline") + " " + caseId }),
        el("p", { id: "chain-verdict", class: ok ? "ok" : "bad", "data-verified": String(ok),
          text: ok ? "✔ " + t("chain_ok", { n: data.chain.events_checked }) : "✘ " + t("chain_bad") }),
        el("ul", { class: "bad", id: "chain-problems", hidden: !data.chain.problems.length }, data.chain.problems.map((p) => el("li", { text: p }))),
        el("table", { id: "timeline-table" }, el("thead", {}, el("tr", {}, cols.map((c) => el("th", { text: t(c) })))),
          el("tbody", {}, data.rows.map((r) => {
            const sla = r.record !== "case_event";
            const [kind, type] = sla ? String(r.kind).split(":") : [r.kind, null];
            const label = sla ? t("sla") + " " + (T.kinds[kind] || kind) + " · " + (T.breach_types[type] || type) : (T.kinds[kind] || kind);
            const detail = [r.reason, r.note, r.source && r.report_id ? r.source + " " + r.report_id : null].filter(Boolean).join(" · ");
            const chain = r.chain;
            return el("tr", { "data-seq": display(r.seq), "data-kind": r.kind, "data-record": r.record, class: sla ? "sla" : null },
              cell(r.at_ms, when(r.at_ms)), cell(r.kind, label), cell(r.unit_id, unitName(r.unit_id)),
              cell(r.assignee, r.assignee ? unitName(r.assignee) + (r.tier ? " (" + (T.tiers[r.tier] || r.tier) + ")" : "") : ""),
              cell(detail), cell(r.rating),
              chain ? el("td", { "data-value": String(chain.verified), class: chain.verified ? "ok" : "bad", title: chain.hash, text: chain.verified ? t("verified") : t("not_verified") }) : el("td", {}),
              cell(r.kafka_topic + "[" + r.kafka_partition + "]@" + r.kafka_offset));
          }))),
        el("p", {}, el("a", { href: withLang("/api/export/timeline.csv", { case_id: caseId }), text: t("timeline_table") + " CSV" }), " · ",
          el("a", { href: withLang("/api/export/timeline.xlsx", { case_id: caseId }), text: "Excel" })));
    }
    const initial = params.get("case");
    if (initial) { f.case_id.value = initial; }
    await search();
  }

  // -- export --------------------------------------------------------------------------------------
  async function exportPage() {
    const month = el("input", { type: "month", id: "month", value: monthDefault });
    const by = el("select", { id: "by" }, ["street", "department"].map((u) => el("option", { value: u, text: t(u) })));
    const list = el("tbody");
    const tables = [["overview", ["month"]], ["breach_summary", ["month"]], ["ranking", ["month", "by", "min_cases"]], ["provenance", ["month", "by"]], ["map", []], ["cases", []]];
    function render() {
      const q = { month: month.value, by: by.value, min_cases: state.reference.min_cases };
      list.replaceChildren(...tables.map(([name, keys]) => {
        const args = Object.fromEntries(keys.map((k) => [k, q[k]]));
        return el("tr", { "data-table": name }, el("td", { text: t(name + "_table") }),
          el("td", {}, el("a", { href: withLang("/api/export/" + name + ".csv", args), class: "csv", text: "CSV" }), " · ",
            el("a", { href: withLang("/api/export/" + name + ".xlsx", args), class: "xlsx", text: "Excel" })));
      }));
    }
    month.addEventListener("change", render); by.addEventListener("change", render);
    main.append(el("h1", { text: t("export") }), el("p", { class: "muted", text: t("export_note") }),
      el("div", { class: "controls" }, el("label", { text: t("month") }, month), el("label", { text: t("by") }, by)),
      el("table", { id: "export-table" }, el("thead", {}, el("tr", {}, el("th", { text: t("table") }), el("th", { text: t("download") }))), list));
    render();
  }

  async function start() {
    try { state.reference = await api("/api/reference"); } catch (exc) { return error(main, exc); }
    const pages = { overview, ranking, map: gridMap, cases, export: exportPage };
    await pages[PAGE]();
    body.dataset.ready = "true";
  }
  start();
})();
