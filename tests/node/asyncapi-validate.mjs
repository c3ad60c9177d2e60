// Validates AsyncAPI documents with the official parser (@asyncapi/parser, from the node
// install): each argument is a JSON file.
//   NODE_DIR=… node asyncapi-validate.mjs FILE…
// Prints, per file, one JSON line {"file", "errors", "warnings", "summary"} (the parser's
// diagnostics: message, path, code; the channels and operations as the parser's model reads
// them) and exits 1 when any document has an error.
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(join(process.env.NODE_DIR, 'package.json'));
const { Parser } = require('@asyncapi/parser');

const parser = new Parser();
let failed = false;
for (const file of process.argv.slice(2)) {
  const text = await readFile(file, 'utf8');
  const { document, diagnostics } = await parser.parse(text);
  const shown = (d) => ({ message: d.message, path: d.path.join('/'), code: d.code });
  // Severity 0 is an error, 1 a warning (Spectral's levels).
  const errors = diagnostics.filter((d) => d.severity === 0).map(shown);
  const warnings = diagnostics.filter((d) => d.severity === 1).map(shown);
  if (errors.length > 0 || document === undefined) failed = true;
  const summary = document === undefined ? null : {
    version: document.version(),
    channels: document.channels().all().map((c) => ({
      id: c.id(),
      address: c.address(),
      messages: c.messages().all().map((m) => m.name()),
      servers: c.servers().all().map((s) => `${s.protocol()}://${s.host()}`),
    })),
    operations: document.operations().all().map((o) => ({ id: o.id(), action: o.action(), channels: o.channels().all().map((c) => c.id()) })),
  };
  console.log(JSON.stringify({ file, errors, warnings, summary }));
}
process.exit(failed ? 1 : 0);
