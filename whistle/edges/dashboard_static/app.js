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
  for (const [path, page] of [["/", "overview"], ["/ranking", "ranking"], ["/map", "map"], ["/cases", "cases"], ["/trends", "trends"], ["/dead-letters", "dead_letters"], ["/export", "export"]]) {
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
      const tableNode = el("table", { id: "breach-table" }, el("thead", {}, el("tr", {}, [t("tier"), t("warnings"), t("breaches"), t("urgings"), t("criticisms"), t("referrals"), t("vs_prev")].map((h) => el("th", { text: h })))),
        el("tbody", {}, tiers.filter((tier) => byTier[tier] || prevTier[tier]).map((tier) => {
          const none = { warnings: 0, breaches: 0, urgings: 0, criticisms: 0, referrals: 0 };
          const r = byTier[tier] || none, p = prevTier[tier] || none;
          const d = (r.breaches + r.urgings + r.criticisms + r.referrals) - (p.breaches + p.urgings + p.criticisms + p.referrals);
          return el("tr", { "data-tier": tier }, cell(tier, T.tiers[tier] || tier), cell(r.warnings), cell(r.breaches), cell(r.urgings),
            cell(r.criticisms), cell(r.referrals),
            el("td", { text: (d > 0 ? "▲ " : d < 0 ? "▼ " : "＝ ") + Math.abs(d) }));
        })));
      out.replaceChildren(cards, el("p", { class: "muted", text: t("cohort_note") }), el("h2", { text: t("breaches_by_tier") }),
        el("div", { class: "split" }, chartNode, tableNode),
        el("p", {}, el("a", { href: withLang("/api/export/overview.csv", { month: month.value }), text: "CSV" }), " · ",
          el("a", { href: withLang("/api/export/breach_summary.csv", { month: month.value }), text: t("breach_summary_table") + " CSV" })));
      const instance = mount(chartNode);
      instance.setOption({
        textStyle: FONT, tooltip: { trigger: "axis" }, legend: { data: [t("warnings"), t("breaches"), t("urgings"), t("criticisms"), t("referrals")] },
        xAxis: { type: "category", data: tiers.map((x) => T.tiers[x]) }, yAxis: { type: "value", minInterval: 1 },
        series: ["warnings", "breaches", "urgings", "criticisms", "referrals"].map((k, i) => ({ name: t(k), type: "bar", data: tiers.map((x) => (byTier[x] ? byTier[x][k] : 0)),
          itemStyle: { color: ["#f5b041", "#e74c3c", "#7d3c98"][i] } })),
      });
    }
    await load();
  }

  // -- ranking -------------------------------------------------------------------------------------
  const RANK_COLUMNS = ["rank", "unit_id", "score", "received", "response_rate_pct", "resolution_rate_pct", "on_time_rate_pct", "satisfaction_rate_pct",
    "urgings", "criticisms", "referrals", "avg_accept_s", "p90_accept_s", "avg_resolve_h", "p90_resolve_h", "breaches_total"];
  async function ranking() {
    const month = el("input", { type: "month", id: "month", value: monthDefault });
    const by = el("select", { id: "by" }, state.reference.ranking_tiers.map((u) => el("option", { value: u, text: T.tiers[u], selected: (params.get("by") || "street") === u })));
    const minCases = el("input", { type: "number", id: "min-cases", min: "0", value: params.get("min_cases") || "", placeholder: t("min_cases_policy") });
    const asOf = el("input", { type: "text", id: "as-of", value: params.get("as_of") || "", placeholder: t("as_of_now"), size: "30" });
    const out = el("div", { id: "ranking" });
    main.append(el("h1", { text: t("ranking") }), el("div", { class: "controls" }, el("label", { text: t("month") }, month), el("label", { text: t("by") }, by),
      el("label", { text: t("min_cases") }, minCases), el("label", { text: t("as_of") }, asOf),
      el("button", { id: "load", text: t("load"), onclick: () => load() })), out);
    let sortKey = "rank", sortDir = 1;
    async function load() {
      out.replaceChildren(el("p", { class: "muted", text: "…" }));
      let data;
      const query = { month: month.value, by: by.value };
      if (minCases.value) query.min_cases = minCases.value;
      if (asOf.value) query.as_of = asOf.value;
      try { data = await api("/api/ranking", query); } catch (exc) { return error(out, exc); }
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
      const q = { month: data.month, by: data.by, min_cases: data.min_cases, as_of: data.as_of };
      const prov = el("div", { id: "provenance", class: "panel", hidden: true });
      const pc = ["source_table", "kafka_topic", "kafka_partition", "min_offset", "max_offset", "row_count", "policy_versions", "as_of", "score_policy"];
      async function showProvenance() {  // fetched on the first click: the ranking's own as-of, so it is this ranking's provenance
        let rows;
        prov.replaceChildren(el("p", { class: "muted", text: "…" }));
        try { rows = (await api("/api/provenance", { month: data.month, by: data.by, as_of: data.as_of })).rows; } catch (exc) { return error(prov, exc); }
        prov.replaceChildren(el("p", { text: t("provenance_note") }), el("table", { id: "provenance-table" },
          el("thead", {}, el("tr", {}, pc.map((c) => el("th", { text: t(c) })))), el("tbody", {}, rows.map((r) => el("tr", {}, pc.map((c) => cell(r[c])))))));
        prov.dataset.loaded = "true";
      }
      const provButton = el("button", { id: "show-provenance", text: t("provenance"), onclick: () => {
        prov.hidden = !prov.hidden; provButton.textContent = prov.hidden ? t("provenance") : t("hide");
        if (!prov.hidden && !prov.dataset.loaded) showProvenance(); } });
      const scorePolicy = data.score_policy;
      out.replaceChildren(el("p", { class: "rule", id: "min-rule", text: t("min_rule", { n: data.min_cases }) }),
        el("p", { class: "rule", id: "as-of-rule", text: t("as_of_rule", { t: data.as_of }) }),
        el("p", { class: "rule", id: "score-rule", text: scorePolicy ? t("score_rule", { policy: scorePolicy }) : t("no_score_rule") }), chartNode,
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

  // -- trends --------------------------------------------------------------------------------------
  const TIERS = ["grid", "community", "street", "department", "supervision", "discipline"];
  const TIER_COLORS = { grid: "#f5b041", community: "#e67e22", street: "#e74c3c", department: "#c0392b", supervision: "#7d3c98", discipline: "#1b2631" };
  function daysOf(month) {
    const [year, number] = month.split("-").map(Number);
    const count = new Date(Date.UTC(year, number, 0)).getUTCDate();
    return [...Array(count).keys()].map((i) => month + "-" + String(i + 1).padStart(2, "0"));
  }
  function monthsUpTo(month, count) {
    const [year, number] = month.split("-").map(Number);
    return [...Array(count).keys()].map((i) => {
      const m = year * 12 + number - count + i; // months since year 0, the first of the window at i = 0
      return Math.floor(m / 12) + "-" + String((m % 12) + 1).padStart(2, "0");
    });
  }
  function numberOrNull(v) { return v === null || v === undefined ? null : Number(v); }
  async function trends() {
    const month = el("input", { type: "month", id: "month", value: monthDefault });
    const bucket = el("select", { id: "bucket" }, ["day", "week"].map((b) => el("option", { value: b, text: t("bucket_" + b), selected: (params.get("bucket") || "day") === b })));
    const months = el("input", { type: "number", id: "months", min: "1", max: "36", value: params.get("months") || String(state.reference.trend_months) });
    const out = el("div", { id: "trends" });
    main.append(el("h1", { text: t("trends") }), el("div", { class: "controls" }, el("label", { text: t("month") }, month),
      el("label", { text: t("bucket") }, bucket), el("label", { text: t("trend_months") }, months),
      el("button", { id: "load", text: t("load"), onclick: () => load() })), out);
    async function load() {
      out.replaceChildren(el("p", { class: "muted", text: "…" }));
      let data;
      try { data = await api("/api/trends", { month: month.value, months: months.value, bucket: bucket.value }); } catch (exc) { return error(out, exc); }
      state.trends = data;
      const q = { month: data.month, months: data.months, bucket: data.bucket };
      const links = (name) => el("p", { class: "muted" }, el("a", { href: withLang("/api/export/trend_" + name + ".csv", q), text: "CSV" }), " · ",
        el("a", { href: withLang("/api/export/trend_" + name + ".xlsx", q), text: "Excel" }));
      const nodes = { breaches: chart("trend-breaches", 340), onTime: chart("trend-on-time", 380), accept: chart("trend-accept", 300), resolve: chart("trend-resolve", 300) };
      out.replaceChildren(
        el("h2", { text: t("trend_breaches_title") }), nodes.breaches, links("breaches"),
        el("h2", { text: t("trend_on_time_title", { n: data.months }) }), nodes.onTime, el("p", { class: "muted", text: t("trend_on_time_note") }), links("on_time"),
        el("h2", { text: t("trend_durations_title") }), el("div", { class: "split even" }, nodes.accept, nodes.resolve),
        el("p", { class: "muted", text: t("trend_durations_note") }), links("durations"));

      const days = daysOf(data.month);
      const tiers = TIERS.filter((tier) => data.breaches.rows.some((r) => r.tier === tier));
      const perDay = (tier) => days.map((day) => data.breaches.rows.filter((r) => r.day === day && r.tier === tier).reduce((n, r) => n + r.breaches + r.urgings + r.criticisms + r.referrals, 0));
      mount(nodes.breaches).setOption({
        textStyle: FONT, tooltip: { trigger: "axis" }, legend: { data: tiers.map((x) => T.tiers[x] || x) }, grid: { left: 50, right: 20 },
        xAxis: { type: "category", data: days.map((d) => d.slice(5)) }, yAxis: { type: "value", minInterval: 1, name: t("breaches_and_referrals") },
        series: tiers.map((tier) => ({ id: tier, name: T.tiers[tier] || tier, type: "bar", stack: "tiers", data: perDay(tier), itemStyle: { color: TIER_COLORS[tier] } })),
      });

      const span = monthsUpTo(data.month, data.months);
      const streets = state.reference.streets.filter((s) => data.on_time.rows.some((r) => r.unit_id === s.id));
      mount(nodes.onTime).setOption({
        textStyle: FONT, tooltip: { trigger: "axis", valueFormatter: (v) => (v === null || v === undefined ? "" : v + "%") },
        legend: { type: "scroll", data: streets.map((s) => s.name) }, grid: { left: 50, right: 20, top: 50 },
        xAxis: { type: "category", data: span }, yAxis: { type: "value", min: 0, max: 100, axisLabel: { formatter: "{value}%" } },
        series: streets.map((s) => ({ id: s.id, name: s.name, type: "line", connectNulls: false, symbolSize: 6,
          data: span.map((m) => { const r = data.on_time.rows.find((x) => x.month === m && x.unit_id === s.id); return r ? Number(r.on_time_rate_pct) : null; }) })),
      });

      const buckets = data.durations.rows.map((r) => r.bucket_start);
      const line = (id, key, scale, color, dashed) => ({ id, name: t(id), type: "line", symbolSize: 5, itemStyle: { color }, lineStyle: dashed ? { type: "dashed" } : undefined,
        data: data.durations.rows.map((r) => (r[key] === null ? null : Math.round(Number(r[key]) * scale * 100) / 100)) });
      mount(nodes.accept).setOption({
        textStyle: FONT, title: { text: t("time_to_accept"), left: "center", textStyle: { fontSize: 14 } }, tooltip: { trigger: "axis" },
        legend: { top: 24, data: [t("p50_accept_min"), t("p90_accept_min")] }, grid: { top: 60, left: 50, right: 20 },
        xAxis: { type: "category", data: buckets.map((b) => b.slice(5)) }, yAxis: { type: "value", name: t("minutes") },
        series: [line("p50_accept_min", "p50_accept_s", 1 / 60, "#1f618d"), line("p90_accept_min", "p90_accept_s", 1 / 60, "#1f618d", true)],
      });
      mount(nodes.resolve).setOption({
        textStyle: FONT, title: { text: t("time_to_resolve"), left: "center", textStyle: { fontSize: 14 } }, tooltip: { trigger: "axis" },
        legend: { top: 24, data: [t("p50_resolve_h"), t("p90_resolve_h")] }, grid: { top: 60, left: 50, right: 20 },
        xAxis: { type: "category", data: buckets.map((b) => b.slice(5)) }, yAxis: { type: "value", name: t("hours") },
        series: [line("p50_resolve_h", "p50_resolve_h", 1, "#27ae60"), line("p90_resolve_h", "p90_resolve_h", 1, "#27ae60", true)],
      });
    }
    await load();
  }

  // -- dead letters and verify -------------------------------------------------------------------------
  async function deadLetters() {
    const month = el("input", { type: "month", id: "month", value: monthDefault });
    const out = el("div", { id: "dead-letters" });
    const verify = el("div", { id: "verify", class: "panel" });
    main.append(el("h1", { text: t("dead_letters") }), el("h2", { text: t("verify_title") }), verify,
      el("div", { class: "controls" }, el("label", { text: t("failed_in") }, month), el("button", { id: "load", text: t("load"), onclick: () => load() })), out);
    async function load() {
      out.replaceChildren(el("p", { class: "muted", text: "…" }));
      let data;
      try { data = await api("/api/dead_letters", { month: month.value }); } catch (exc) { return error(out, exc); }
      state.deadLetters = data;
      const groups = new Map(); // stage + reason -> {stage, reason, records, topics}
      for (const r of data.counts.rows) {
        const reason = r.reason || r.error_class, key = r.stage + "\u0000" + reason;
        const g = groups.get(key) || { stage: r.stage, reason, records: 0, topics: new Set() };
        g.records += r.records; g.topics.add(r.original_topic + "[" + r.original_partition + "]");
        groups.set(key, g);
      }
      const rows = [...groups.values()].sort((a, b) => b.records - a.records || a.stage.localeCompare(b.stage) || a.reason.localeCompare(b.reason));
      const total = rows.reduce((n, g) => n + g.records, 0);
      const chartNode = chart("dead-letter-chart", Math.max(160, 60 + 32 * rows.length));
      const cols = ["failed_ms", "stage", "reason", "error_message", "original", "original_key", "original_value_size", "dead_letter"];
      out.replaceChildren(
        el("div", { class: "cards" }, el("div", { class: "card", id: "card-dead-letters", "data-value": String(total) },
          el("div", { class: "label", text: t("dead_letters_in", { month: data.month }) }), el("div", { class: "value", text: String(total) }))),
        el("h2", { text: t("dead_letters_by_stage") }),
        el("div", { class: "split" }, chartNode, el("table", { id: "dead-letter-counts" },
          el("thead", {}, el("tr", {}, [t("stage"), t("reason"), t("records"), t("original_partitions")].map((h) => el("th", { text: h })))),
          el("tbody", {}, rows.map((g) => el("tr", { "data-stage": g.stage, "data-reason": g.reason }, cell(g.stage, T.stages[g.stage] || g.stage),
            cell(g.reason), cell(g.records), cell([...g.topics].sort().join(", "))))))),
        el("h2", { text: t("dead_letter_examples", { n: data.examples.rows.length }) }),
        el("table", { id: "dead-letter-examples" }, el("thead", {}, el("tr", {}, cols.map((c) => el("th", { text: t(c) })))),
          el("tbody", {}, data.examples.rows.map((r) => el("tr", { "data-offset": r.original_topic + "[" + r.original_partition + "]@" + r.original_offset },
            cell(r.failed_ms, when(r.failed_ms)), cell(r.stage, T.stages[r.stage] || r.stage), cell(r.reason || r.error_class),
            el("td", { class: "message", title: r.error_message, text: r.error_message + (r.field ? " (" + r.field + ")" : "") }),
            cell(r.original_topic + "[" + r.original_partition + "]@" + r.original_offset), cell(r.original_key), cell(r.original_value_size),
            cell(r.kafka_topic + "[" + r.kafka_partition + "]@" + r.kafka_offset))))),
        el("p", { class: "muted" }, el("a", { href: withLang("/api/export/dead_letters.csv", { month: data.month, limit: 200 }), text: "CSV" }), " · ",
          el("a", { href: withLang("/api/export/dead_letters.xlsx", { month: data.month, limit: 200 }), text: "Excel" })));
      mount(chartNode).setOption({
        textStyle: FONT, tooltip: { trigger: "axis", axisPointer: { type: "shadow" } }, grid: { left: 220, right: 30, top: 10, bottom: 30 },
        xAxis: { type: "value", minInterval: 1 }, yAxis: { type: "category", inverse: true, data: rows.map((g) => (T.stages[g.stage] || g.stage) + " · " + g.reason) },
        series: [{ id: "dead_letters", name: t("records"), type: "bar", data: rows.map((g) => g.records), itemStyle: { color: "#c0392b" } }],
      });
    }
    async function runVerify() {
      verify.replaceChildren(el("p", { id: "verify-verdict", class: "muted", "data-status": "running", text: t("verify_running") }));
      let v;
      try { v = await api("/api/verify"); } catch (exc) {
        verify.replaceChildren(el("p", { id: "verify-verdict", class: "bad", "data-status": "error", text: t("verify_failed") + ": " + exc.message }),
          el("button", { id: "verify-run", text: t("verify_again"), onclick: () => runVerify() }));
        body.dataset.verify = "error";
        return;
      }
      state.verify = v;
      const shown = v.findings.rows.filter((f) => f.status !== "noted");
      const cols = ["status", "kind", "topic", "partition", "first_offset", "last_offset", "records", "detail"];
      verify.replaceChildren(
        el("p", { id: "verify-verdict", class: "verdict " + v.status, "data-status": v.status,
          text: t("verdict_" + v.status, { broken: v.broken, behind: v.behind }) }),
        el("p", { class: "muted", id: "verify-summary", text: t("verify_summary", { partitions: v.partitions, records: v.records_in_kafka,
          dead: v.dead_letters, seconds: Number(v.seconds).toFixed(2), at: when(v.checked_at_ms) }) }),
        ...(shown.length ? [el("table", { id: "verify-findings" }, el("thead", {}, el("tr", {}, cols.map((c) => el("th", { text: t("f_" + c) })))),
          el("tbody", {}, shown.map((f) => el("tr", { "data-status": f.status, "data-kind": f.kind }, cols.map((c) => c === "status" ? cell(f.status, t("status_" + f.status)) : cell(f[c]))))))] : []),
        el("button", { id: "verify-run", text: t("verify_again"), onclick: () => runVerify() }));
      body.dataset.verify = v.status;
    }
    runVerify(); // in parallel with the dead letters: the page is drawn when they are, the verdict follows
    await load();
  }

  // -- export --------------------------------------------------------------------------------------
  async function exportPage() {
    const month = el("input", { type: "month", id: "month", value: monthDefault });
    const by = el("select", { id: "by" }, ["street", "department"].map((u) => el("option", { value: u, text: t(u) })));
    const list = el("tbody");
    const tables = [["overview", ["month"]], ["breach_summary", ["month"]], ["ranking", ["month", "by", "min_cases"]], ["provenance", ["month", "by"]], ["map", []], ["cases", []],
      ["trend_breaches", ["month"]], ["trend_on_time", ["month"]], ["trend_durations", ["month"]], ["dead_letters", ["month"]]];
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
    const pages = { overview, ranking, map: gridMap, cases, trends, dead_letters: deadLetters, export: exportPage };
    await pages[PAGE]();
    body.dataset.ready = "true";
  }
  start();
})();
