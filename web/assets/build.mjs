/*
 * Builds the staff web app's front-end assets into web/static/vendor/.
 *
 *   npm ci && npm run build
 *
 * Output (all plain files, served by the app itself):
 *   viewer.js    IIFE  bpmn-js NavigatedViewer + case markers  -> window.AftercareViewer
 *   modeler.js   IIFE  bpmn-js Modeler + properties panel      -> window.AftercareModeler
 *   chart.js     IIFE  Chart.js with all registerables         -> window.Chart
 *   diagram-js.css, bpmn-js.css, bpmn-font/css/bpmn.css, bpmn-font/font/*
 *   diagram.css (markers), modeler.css (editor layout)
 */

import { build } from 'esbuild';
import { cp, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const outdir = path.join(root, 'web', 'static', 'vendor');
const bpmnAssets = path.join(root, 'node_modules', 'bpmn-js', 'dist', 'assets');

const started = Date.now();

/*
 * The pages run under a Content-Security-Policy without 'unsafe-inline' for
 * styles. bpmn-js draws its align/distribute menu icons from SVG markup with
 * style="..." attributes, which such a policy blocks. Rewrite those
 * declarations as the equivalent SVG presentation attributes, which it allows.
 */
const cspSafeIcons = {
  name: 'csp-safe-icons',
  setup(pluginBuild) {
    const filter = /bpmn-js[\\/]lib[\\/]features[\\/](align|distribute)-elements[\\/]\w+Icons\.js$/;

    pluginBuild.onLoad({ filter }, async args => {
      const source = await readFile(args.path, 'utf8');
      let count = 0;

      const contents = source.replace(/style="([^"]*)"/g, (match, declarations) => {
        count++;

        return declarations
          .split(';')
          .map(d => d.trim())
          .filter(Boolean)
          .map(d => {
            const colon = d.indexOf(':');
            return d.slice(0, colon).trim() + '="' + d.slice(colon + 1).trim() + '"';
          })
          .join(' ');
      });

      return {
        contents,
        loader: 'js',
        warnings: count ? [] : [ { text: 'no style attributes found in ' + args.path } ]
      };
    });
  }
};

await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });

// generated output: keep it out of version control wherever it is built
await writeFile(path.join(outdir, '.gitignore'), '*\n');

await build({
  absWorkingDir: root,
  entryPoints: {
    viewer: 'web/assets/viewer.js',
    modeler: 'web/assets/modeler.js',
    chart: 'web/assets/chart.js'
  },
  outdir,
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: [ 'es2020' ],
  minify: true,
  sourcemap: 'linked',
  legalComments: 'eof',
  charset: 'utf8',
  define: {
    'process.env.NODE_ENV': '"production"'
  },
  plugins: [ cspSafeIcons ],
  logLevel: 'warning'
});

for (const bundle of [ 'viewer.js', 'modeler.js' ]) {
  const text = await readFile(path.join(outdir, bundle), 'utf8');

  if (/style=\\?"/.test(text)) {
    console.warn('warning: ' + bundle + ' still contains style="..." markup (blocked by a strict CSP)');
  }
}

const copies = [
  [ path.join(bpmnAssets, 'diagram-js.css'), 'diagram-js.css' ],
  [ path.join(bpmnAssets, 'bpmn-js.css'), 'bpmn-js.css' ],
  [ path.join(bpmnAssets, 'bpmn-font', 'css', 'bpmn.css'), 'bpmn-font/css/bpmn.css' ],
  [ path.join(bpmnAssets, 'bpmn-font', 'font'), 'bpmn-font/font' ],
  [ path.join(here, 'diagram.css'), 'diagram.css' ],
  [ path.join(here, 'modeler.css'), 'modeler.css' ]
];

for (const [ from, to ] of copies) {
  await cp(from, path.join(outdir, to), { recursive: true });
}

async function list(dir, prefix = '') {
  const lines = [];

  for (const name of (await readdir(dir)).sort()) {
    const full = path.join(dir, name);
    const info = await stat(full);

    if (info.isDirectory()) {
      lines.push(...await list(full, prefix + name + '/'));
    } else {
      lines.push('  ' + (prefix + name).padEnd(36) + String(Math.round(info.size / 1024)).padStart(6) + ' KiB');
    }
  }

  return lines;
}

console.log('web/static/vendor/ (' + (Date.now() - started) + ' ms)');
console.log((await list(outdir)).join('\n'));
