import { prescan } from './dist/client/scan.js';
import { ExcludeMatcher } from './dist/client/excludes.js';
const ex = await ExcludeMatcher.create({ excludes: [], includes: [], excludeFiles: [], defaultExcludes: true, excludeCaches: true, excludeLargerThan: undefined });
for (let i = 0; i < 3; i++) { const t = performance.now(); const s = await prescan(['/tmp/cbdata'], ex); console.log('prescan', s.files, (performance.now() - t).toFixed(0), 'ms'); }
