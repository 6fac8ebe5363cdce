// Compile-time check of ../grafana-dashboard.json against Grafana's published
// dashboard model (@grafana/schema, Dashboard = v1 / schemaVersion-based JSON model).
// Run via ../check.sh, or from deploy/observability after npm ci in dashboard-check:
//   dashboard-check/node_modules/.bin/tsc --noEmit -p dashboard-check
// (plain `npx tsc` from deploy/observability would not find the local install.)
//
// Why `Widened<Dashboard>` and not plain `Dashboard`:
// TypeScript types an imported JSON file with widened primitives: "absolute"
// becomes `string`, 1 becomes `number`. @grafana/schema models several fields
// as enums or literal unions (ThresholdsMode, FieldColorModeId, VariableType,
// MappingType, RowPanel.type = 'row', ...), which a JSON `string` can never
// satisfy. Widened<T> relaxes exactly those leaves to their primitive type and
// keeps everything else: required properties, property types (string vs
// number vs boolean vs array vs object), array element shapes, nullability.
// So `panels: "x"`, a panel without `type`, `gridPos.w: "12"`, a variable
// without `name`, or `schemaVersion` missing all fail to compile.
import type { Dashboard } from '@grafana/schema';
import dashboard from '../grafana-dashboard.json';

type Widened<T> = T extends string
  ? string
  : T extends number
    ? number
    : T extends boolean
      ? boolean
      : T extends null | undefined
        ? T
        : T extends ReadonlyArray<infer U>
          ? Array<Widened<U>>
          : T extends object
            ? { [K in keyof T]: Widened<T[K]> }
            : T;

export type DashboardJson = Widened<Dashboard>;

const d = dashboard satisfies DashboardJson;

// Value-level rules (uid, unique ids, layout, datasource wiring, PromQL, metric
// names) live in lint.mjs; check.sh runs both.
export default d;
