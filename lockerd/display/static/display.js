// lockerd-display: renders what the server pushes. Every word comes translated from the server;
// this file holds no text a person reads.
"use strict";
(function () {
  const body = document.body;
  const root = document.getElementById("root");
  const kind = body.dataset.kind;
  const page = body.dataset.page;
  const stream = kind === "wall" ? "/stream/wall" : "/stream/cabinet/" + encodeURIComponent(page);
  window.lockerdShown = { seq: 0, at: 0, views: 0 };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function grid(cells, columns) {
    const g = el("div", "grid");
    g.style.gridTemplateColumns = "repeat(" + columns + ", 1fr)";
    for (const c of cells) {
      const cell = el("div", "cell door-" + c.door + (c.here ? " here" : "") + (c.alarm ? " alarm" : "") +
        (c.fault ? " fault" : ""), c.id);
      cell.id = "cell-" + c.id;
      g.appendChild(cell);
    }
    return g;
  }

  function cabinet(v) {
    root.replaceChildren();
    root.appendChild(el("header", "title", v.title));
    const o = v.outcome;
    const p = v.pending;
    const main = el("section", "outcome " + (o ? "tone-" + o.tone : p ? "tone-pending" : "idle"));
    main.id = "outcome";
    if (o) {
      main.appendChild(el("h1", "headline", o.headline));
      if (o.detail) main.appendChild(el("p", "detail", o.detail));
      main.appendChild(el("p", "time", o.time));
    } else if (!p) {
      main.appendChild(el("h1", "headline", v.idle));
    }
    if (p) {
      const box = el("div", "pending");
      box.id = "pending";
      if (p.item) box.appendChild(el("h2", "item", p.item));
      for (const who of p.people) box.appendChild(el("p", "person", who));
      if (p.reason_card) box.appendChild(el("p", "card", p.reason_card));
      if (p.missing) box.appendChild(el("p", "missing", p.missing));
      box.appendChild(el("p", "left", p.left));
      main.appendChild(box);
    }
    root.appendChild(main);
    root.appendChild(grid(v.grid, v.columns));
    if (o && o.seq !== window.lockerdShown.seq) {
      window.lockerdShown = { seq: o.seq, at: Date.now(), views: window.lockerdShown.views };
    }
    body.classList.toggle("is-idle", !o && !p);
  }

  function table(head, rows) {
    const t = el("table");
    const tr = el("tr");
    for (const h of head) tr.appendChild(el("th", "", h));
    t.appendChild(tr);
    for (const r of rows) {
      const row = el("tr");
      for (const c of r) row.appendChild(el("td", "", c));
      t.appendChild(row);
    }
    return t;
  }

  function wall(v) {
    root.replaceChildren();
    const head = el("header", "title");
    head.appendChild(el("span", "name", v.title));
    for (const c of v.controllers) {
      const span = el("span", "controller " + (c.online ? "online" : "offline"), c.text);
      span.id = "controller-" + c.node;
      head.appendChild(span);
    }
    head.appendChild(el("span", "clock", v.clock + " (" + v.zone + ")"));
    root.appendChild(head);
    const cabs = el("section", "cabinets");
    cabs.id = "cabinets";
    for (const cab of v.cabinets) {
      const box = el("div", "cabinet kind-" + cab.kind);
      box.appendChild(el("h2", "", cab.title));
      const g = el("div", "grid");
      for (const c of cab.cells) {
        const cell = el("div", "cell door-" + c.door + (c.alarm.length ? " alarm" : "") + (c.faults.length ? " fault" : ""));
        cell.id = "cell-" + (c.key || c.id);
        cell.appendChild(el("b", "", c.id));
        cell.appendChild(el("span", "door", c.door_text));
        cell.appendChild(el("span", "lock", c.lock));
        for (const i of c.items) cell.appendChild(el("span", "item", i));
        for (const f of c.faults) cell.appendChild(el("span", "flag", f));
        for (const a of c.alarm) cell.appendChild(el("span", "flag", a));
        g.appendChild(cell);
      }
      box.appendChild(g);
      cabs.appendChild(box);
    }
    root.appendChild(cabs);
    const side = el("section", "side");
    const L = v.labels;
    const ov = el("div", "overdue");
    ov.id = "overdue";
    ov.appendChild(el("h2", "", L.overdue));
    if (v.overdue.length) {
      ov.appendChild(table([L.item, L.level, L.responsible, L.since, L.due, L.late],
        v.overdue.map((o) => [o.item, o.level_text, o.responsible, o.since, o.due, o.late])));
    } else ov.appendChild(el("p", "none", L.none_overdue));
    side.appendChild(ov);
    const al = el("div", "alarms");
    al.id = "alarms";
    al.appendChild(el("h2", "", L.alarms));
    if (v.alarms.length) for (const a of v.alarms) al.appendChild(el("p", "alarm", a.text));
    else al.appendChild(el("p", "none", L.no_alarms));
    side.appendChild(al);
    const td = el("div", "today");
    td.id = "today";
    td.appendChild(el("h2", "", L.today));
    td.appendChild(table(["", ""], v.activity.map((a) => [a.what, a.count])));
    const recent = el("ul", "recent");
    for (const r of v.recent) recent.appendChild(el("li", "", r.time + "  " + r.text));
    td.appendChild(recent);
    side.appendChild(td);
    root.appendChild(side);
  }

  function connect() {
    const src = new EventSource(stream + location.search);
    src.onmessage = function (msg) {
      if (!msg.data) return;
      const v = JSON.parse(msg.data);
      (kind === "wall" ? wall : cabinet)(v);
      window.lockerdShown.views += 1;
      body.classList.remove("offline");
    };
    src.onerror = function () { body.classList.add("offline"); };
  }
  connect();
})();
