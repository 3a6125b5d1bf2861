// Builds the client into dist/ (or the folder given as the first argument):
//   app.js     src/main.js bundled with DOMPurify, minified
//   app.css    src/style.css minified
//   index.html, favicon.svg copied as they are
// The output depends only on the sources and the locked esbuild version, so that
// scripts/test-web.sh can rebuild it and compare it with the committed web/dist.
import { build } from 'esbuild';
import { cpSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] || join(here, 'dist'));
const src = join(here, 'src');

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const common = { bundle: true, minify: true, logLevel: 'warning', charset: 'utf8', legalComments: 'eof', absWorkingDir: here };
await build({ ...common, entryPoints: [join(src, 'main.js')], outfile: join(out, 'app.js'), format: 'iife', target: ['es2020'] });
await build({ ...common, entryPoints: [join(src, 'style.css')], outfile: join(out, 'app.css'), target: ['chrome100', 'firefox100', 'safari15'] });
for (const f of ['index.html', 'favicon.svg']) cpSync(join(src, f), join(out, f));
console.log(`built ${out}`);
