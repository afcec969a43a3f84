#!/usr/bin/env node
// Compiles common/chunker.wat into common/chunker-wasm.ts (`npm run gen:wasm`). The bytes are
// committed so that neither the build nor a user's machine needs wabt; test/chunker.test.ts
// compiles the source again and fails when the committed bytes no longer match it.
import { readFileSync, writeFileSync } from 'node:fs';
import wabtInit from 'wabt';

const src = new URL('../common/chunker.wat', import.meta.url);
const wabt = await wabtInit();
const { buffer } = wabt.parseWat('chunker.wat', readFileSync(src, 'utf8')).toBinary({});
const base64 = Buffer.from(buffer).toString('base64');
writeFileSync(
  new URL('../common/chunker-wasm.ts', import.meta.url),
  `// Generated from common/chunker.wat by \`npm run gen:wasm\`; do not edit.\nexport const CHUNKER_WASM = Buffer.from(\n  '${base64}',\n  'base64',\n);\n`,
);
console.log(`common/chunker-wasm.ts: ${buffer.length} bytes of WebAssembly`);
