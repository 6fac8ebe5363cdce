// Semantic lint for grafana-dashboard.json and alerts.yml (plain Node, no dependencies).
// The TypeScript check (check.ts) validates the dashboard's shape; this validates
// what the type system cannot see: ids, layout, datasource wiring, PromQL habits
// and that every metric name used exists.
//
// Usage (from anywhere):
//   node dashboard-check/lint.mjs [--metrics SCRAPE_FILE]
// With --metrics, every datapack_worker_* name used by the dashboard and the alerts
// is looked up in the scrape; missing names are warnings, or errors when
// STRICT_METRICS=1 (a labelled metric that was never touched is absent from a scrape).
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const base = join(here, '..');
const dashboard = JSON.parse(readFileSync(join(base, 'grafana-dashboard.json'), 'utf8'));
const alertsText = readFileSync(join(base, 'alerts.yml'), 'utf8');

// The worker's metric families (counters without the _total suffix are not used).
const KNOWN = new Set([
  'datapack_worker_messages_received_total',
  'datapack_worker_messages_total',
  'datapack_worker_records_total',
  'datapack_worker_dead_letters_total',
  'datapack_worker_hashed_bytes_total',
  'datapack_worker_receives_total',
  'datapack_worker_empty_receives_total',
  'datapack_worker_visibility_extensions_total',
  'datapack_worker_paused_seconds_total',
  'datapack_worker_db_commits_total',
  'datapack_worker_records_per_message',
  'datapack_worker_object_size_bytes',
  'datapack_worker_object_processing_seconds',
  'datapack_worker_phase_seconds',
  'datapack_worker_event_to_commit_seconds',
  'datapack_worker_queue_wait_seconds',
  'datapack_worker_db_batch_size',
  'datapack_worker_in_flight_messages',
  'datapack_worker_workers_busy',
  'datapack_worker_worker_concurrency',
  'datapack_worker_pollers_idle',
  'datapack_worker_pollers_receiving',
  'datapack_worker_dependency_up',
  'datapack_worker_paused',
  'datapack_worker_queue_messages',
  'datapack_worker_queue_oldest_message_age_seconds',
  'datapack_worker_build_info',
  'datapack_worker_checksum_audit_total',
]);
const HISTOGRAMS = new Set([
  'datapack_worker_records_per_message',
  'datapack_worker_object_size_bytes',
  'datapack_worker_object_processing_seconds',
  'datapack_worker_phase_seconds',
  'datapack_worker_event_to_commit_seconds',
  'datapack_worker_queue_wait_seconds',
  'datapack_worker_db_batch_size',
]);

const errors = [];
const warnings = [];
const err = (m) => errors.push(m);

// ---- dashboard structure
if (dashboard.uid !== 'datapack-worker') err(`dashboard uid is ${JSON.stringify(dashboard.uid)}, expected "datapack-worker"`);
if (!(dashboard.schemaVersion >= 39)) err(`schemaVersion ${dashboard.schemaVersion} < 39`);
const vars = Object.fromEntries((dashboard.templating?.list ?? []).map((v) => [v.name, v]));
if (vars.datasource?.type !== 'datasource' || vars.datasource?.query !== 'prometheus')
  err('templating needs a variable "datasource" of type datasource with query "prometheus"');
if (vars.instance?.type !== 'query') err('templating needs a query variable "instance"');

const ids = new Set();
const cells = new Map();
const exprs = [];
for (const p of dashboard.panels ?? []) {
  const where = `panel ${p.id} "${p.title}"`;
  if (ids.has(p.id)) err(`${where}: duplicate id`);
  ids.add(p.id);
  const g = p.gridPos;
  if (!g || g.x < 0 || g.w < 1 || g.x + g.w > 24) err(`${where}: gridPos out of the 24-column grid`);
  else
    for (let y = g.y; y < g.y + g.h; y++)
      for (let x = g.x; x < g.x + g.w; x++) {
        const k = `${x},${y}`;
        if (cells.has(k)) err(`${where}: overlaps panel ${cells.get(k)}`);
        cells.set(k, p.id);
      }
  if (p.type === 'row') {
    if ((p.panels ?? []).length && !p.collapsed) err(`${where}: expanded row must not nest panels`);
    continue;
  }
  if (p.datasource?.uid !== '${datasource}') err(`${where}: datasource must be \${datasource}`);
  if (!p.targets?.length) err(`${where}: no targets`);
  for (const t of p.targets ?? []) {
    if (t.datasource?.uid !== '${datasource}') err(`${where} target ${t.refId}: datasource must be \${datasource}`);
    if (typeof t.expr !== 'string' || !t.expr.trim()) { err(`${where} target ${t.refId}: empty expr`); continue; }
    exprs.push([where, t.expr]);
    if (!t.expr.includes('instance=~"$instance"')) err(`${where} target ${t.refId}: expr does not filter on instance=~"$instance"`);
  }
}

// ---- PromQL habits (dashboard and alerts)
const alertExprs = [...alertsText.matchAll(/expr:\s*\|?\s*\n?([\s\S]*?)(?=\n\s+(?:for|labels):)/g)].map((m) => ['alerts.yml', m[1]]);
for (const [where, e] of [...exprs, ...alertExprs]) {
  for (const m of e.matchAll(/histogram_quantile\(\s*[\d.]+\s*,\s*sum\s+by\s*\(([^)]*)\)\s*\(\s*rate\(\s*(\w+)/g)) {
    if (!m[1].split(',').map((s) => s.trim()).includes('le')) err(`${where}: histogram_quantile aggregation must keep le: ${m[0]}`);
    if (!m[2].endsWith('_bucket')) err(`${where}: histogram_quantile over ${m[2]}, expected a _bucket series`);
  }
  if (/histogram_quantile\(\s*[\d.]+\s*,\s*(?!\s|sum\s+by)/.test(e)) err(`${where}: histogram_quantile without "sum by (le, ...)"`);
  for (const m of e.matchAll(/\b(rate|increase)\((\w+)(\{[^}]*\})?\)/g)) err(`${where}: ${m[1]}() without a range: ${m[0]}`);
  for (const m of e.matchAll(/\brate\((\w+)/g))
    if (!/(_total|_bucket|_sum|_count)$/.test(m[1])) err(`${where}: rate() over non-counter ${m[1]}`);
}

// ---- metric names
const used = new Set();
const family = (n) => {
  const h = n.replace(/_(bucket|sum|count)$/, '');
  return HISTOGRAMS.has(h) ? h : n;
};
for (const [, e] of [...exprs, ...alertExprs])
  for (const m of e.matchAll(/\bdatapack_worker_[a-z0-9_]+/g)) used.add(m[0]);
for (const n of used) if (!KNOWN.has(family(n))) err(`unknown metric ${n} (typo? add it to KNOWN in lint.mjs if the worker exports it)`);
for (const n of used) {
  const f = family(n);
  if (HISTOGRAMS.has(f) && n === f) err(`histogram ${n} used without _bucket/_sum/_count`);
}

const mi = process.argv.indexOf('--metrics');
if (mi !== -1) {
  const file = process.argv[mi + 1];
  if (!file) { console.error('--metrics needs a file'); process.exit(2); }
  const scraped = new Set(
    readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l && !l.startsWith('#'))
      .map((l) => l.split(/[{\s]/)[0]),
  );
  const strict = process.env.STRICT_METRICS === '1';
  for (const n of [...used].sort())
    if (!scraped.has(n)) (strict ? errors : warnings).push(`metric ${n} is used by the dashboard/alerts but absent from ${file}`);
}

for (const w of warnings) console.log(`  warning: ${w}`);
for (const e of errors) console.log(`  error: ${e}`);
console.log(`  ${exprs.length} dashboard queries, ${alertExprs.length} alert expressions, ${used.size} metric names checked`);
process.exit(errors.length ? 1 : 0);
