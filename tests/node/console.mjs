// The web console's browser test: playwright-core drives Debian's Chromium (headless) through the
// operators' scenario against a real server and a real webhook receiver, both started by
// crates/evolution-server/tests/console.rs, which then checks what reached the receiver.
//
//   NODE_DIR=… CHROMIUM=… SHOTS=DIR node console.mjs SERVER_URL APIKEY RECEIVER_URL CONTROL_URL
//
// CONTROL_URL/status/{code} sets the status the receiver answers (500: broken, 200: fixed).
// Prints one JSON line at the end: {"instance","other","live","paused","test","failed","retried",
// "purged","token"} (event ids).
// Exits 1 with the reason on the first failed expectation; a screenshot of each page goes to SHOTS.
import { createRequire } from 'node:module';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const require = createRequire(join(process.env.NODE_DIR, 'package.json'));
const { chromium } = require('playwright-core');

const [base, apikey, receiverUrl, control] = process.argv.slice(2);
const shots = process.env.SHOTS;
if (!base || !apikey || !receiverUrl || !control || !shots || !process.env.CHROMIUM) {
  process.stderr.write('usage: NODE_DIR=… CHROMIUM=… SHOTS=… node console.mjs SERVER_URL APIKEY RECEIVER_URL CONTROL_URL\n');
  process.exit(2);
}
rmSync(shots, { recursive: true, force: true });
mkdirSync(shots, { recursive: true });
const log = (m) => process.stderr.write(`console.mjs: ${m}\n`);
const suffix = Math.random().toString(36).slice(2, 8);
const instance = `console-${suffix}`;
const other = `other-${suffix}`;
const token = `console-token-${suffix}-0123`;
const otherToken = `other-token-${suffix}-0123`;
const TIMEOUT = 30000;

// Console errors: only the browser's own "Failed to load resource … 4xx" lines of the steps that
// expect a refusal are allowed; anything else fails the test.
let refusalsExpected = false;
const errors = [];
let step = 'start';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
context.setDefaultTimeout(TIMEOUT);
const page = await context.newPage();
page.on('console', (msg) => {
  if (msg.type() !== 'error') return;
  const text = msg.text();
  const refusal = /Failed to load resource: the server responded with a status of 4\d\d/.test(text);
  if (!(refusal && refusalsExpected)) errors.push(`[${step}] ${text}`);
});
page.on('pageerror', (e) => errors.push(`[${step}] uncaught: ${e.message}`));

async function shot(name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}
async function expectText(locator, pattern, what) {
  try {
    await locator.filter({ hasText: pattern }).first().waitFor({ state: 'visible' });
  } catch (e) {
    const seen = (await locator.allTextContents().catch(() => [])).join(' | ');
    throw new Error(`${what}: expected ${pattern}, saw "${seen}"`);
  }
}
// One of the instance pages' tabs.
const tab = (name) => page.locator('nav.tabs').getByRole('link', { name, exact: true });
async function setReceiver(status) {
  const r = await fetch(`${control}/status/${status}`, { method: 'POST' });
  if (!r.ok) throw new Error(`the receiver's control answered ${r.status}`);
}
// An application posting an event (what the console watches), with the global key.
async function postEvent(text) {
  const r = await fetch(`${base}/events/${instance}`, {
    method: 'POST',
    headers: { apikey, 'content-type': 'application/json' },
    body: JSON.stringify({ event: 'MESSAGES_UPSERT', data: { message: { conversation: text } } }),
  });
  if (r.status !== 202) throw new Error(`POST /events answered ${r.status}`);
  return (await r.json()).ids[0];
}
async function signIn(key) {
  await page.goto(`${base}/console/#/signin`);
  await page.locator('#apikey').fill(key);
  await page.keyboard.press('Enter');
}
async function signOut() {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.locator('#apikey').waitFor();
}
async function sendTestEvent() {
  await page.locator('#test button[type=submit]').click();
  const id = page.locator('#test-result [data-event-id]');
  await id.waitFor();
  return id.getAttribute('data-event-id');
}
async function deliveryRow(eventId, channel, status) {
  const row = page.locator(`tr[data-event-id="${eventId}"][data-channel="${channel}"]`);
  try {
    await page.locator(`tr[data-event-id="${eventId}"][data-channel="${channel}"][data-status="${status}"]`).waitFor();
  } catch (e) {
    const seen = await row.getAttribute('data-status', { timeout: 1000 }).catch(() => 'no row');
    throw new Error(`delivery of ${eventId} on ${channel}: expected ${status}, saw ${seen}`);
  }
  return row;
}

const ids = {};
try {
  step = 'wrong key';
  refusalsExpected = true;
  await signIn('not-the-key-at-all');
  await expectText(page.locator('.field-error[data-field=apikey]'), /refused \(401\)/, 'a wrong key');
  await shot('01-signin-refused');
  refusalsExpected = false;

  step = 'sign in (global key)';
  await signIn(apikey);
  await page.getByRole('heading', { name: 'Instances' }).waitFor();
  await expectText(page.locator('#who'), /global key/, 'who');

  step = 'create with a bad name';
  refusalsExpected = true;
  await page.locator('#new-name').fill('no spaces allowed');
  await page.getByRole('button', { name: 'Create', exact: true }).click();
  await expectText(page.locator('#create .field-error[data-field=instanceName]'), /instanceName/, 'validation on the name field');
  refusalsExpected = false;

  step = 'create instances';
  for (const [name, tok] of [[instance, token], [other, otherToken]]) {
    await page.locator('#new-name').fill(name);
    await page.locator('#new-token').fill(tok);
    await page.getByRole('button', { name: 'Create', exact: true }).click();
    await page.locator(`tr[data-instance="${name}"]`).waitFor();
    await expectText(page.locator('#flash'), new RegExp(`Created ${name}`), 'created');
  }
  await shot('02-instances');

  step = 'keyboard';
  // Every control of the page is reachable with Tab.
  await page.locator('body').focus();
  const reached = new Set();
  for (let i = 0; i < 40; i += 1) {
    await page.keyboard.press('Tab');
    reached.add(await page.evaluate(() => {
      const el = document.activeElement;
      return el.id || el.getAttribute('aria-label') || el.textContent.trim();
    }));
  }
  for (const want of ['new-name', 'new-token', 'Create', 'signout', 'Instances', 'Metrics', `Delete instance ${instance}`]) {
    if (!reached.has(want)) throw new Error(`Tab never reaches "${want}" (reached: ${[...reached].join(', ')})`);
  }

  step = 'webhook settings';
  await page.locator(`tr[data-instance="${instance}"] a`, { hasText: instance }).click();
  const webhook = page.locator('#channel-webhook');
  await webhook.waitFor();
  refusalsExpected = true;
  await webhook.locator('[data-name=enabled]').check();
  await webhook.locator('[data-name=url]').fill('not a url');
  await webhook.getByRole('button', { name: 'Save webhook' }).click();
  await expectText(webhook.locator('.field-error[data-field=url]'), /webhook\.url/, "the server's message on the URL field");
  if ((await webhook.locator('[data-name=url]').getAttribute('aria-invalid')) !== 'true') throw new Error('the URL field is not marked invalid');
  await shot('03-settings-invalid');
  refusalsExpected = false;
  await webhook.locator('[data-name=url]').fill(receiverUrl);
  await webhook.locator('input[value=MESSAGES_UPSERT]').check();
  await webhook.locator('[data-name=headers]').fill('{"Authorization": "Bearer hidden-header-secret"}');
  await webhook.getByRole('button', { name: 'Save webhook' }).click();
  await expectText(page.locator('#flash'), /Saved the webhook settings/, 'saved');
  // Saved again as shown (header redacted): the stored header must survive (checked on the wire).
  const saved = page.locator('#channel-webhook');
  const shown = await saved.locator('[data-name=headers]').inputValue();
  if (shown.includes('hidden-header-secret') || !shown.includes('**REDACTED**')) throw new Error(`the header is shown back: ${shown}`);
  if ((await page.content()).includes('hidden-header-secret')) throw new Error('a secret is in the page');
  await saved.getByRole('button', { name: 'Save webhook' }).click();
  await expectText(page.locator('#flash'), /Saved the webhook settings/, 'saved again');
  await shot('04-settings');

  step = 'live';
  await tab('Live').click();
  await page.getByRole('button', { name: 'Enable the websocket channel' }).click();
  await expectText(page.locator('#live-status'), /connected/, 'Socket.IO');
  ids.live = await postEvent('seen live');
  const live = page.locator(`#live-list li[data-id="${ids.live}"]`);
  await live.waitFor();
  await live.locator('summary').click();
  await expectText(live.locator('pre'), /seen live/, 'the payload, one click away');

  step = 'pause';
  await page.getByRole('button', { name: 'Pause' }).click();
  ids.paused = await postEvent('held while paused');
  await expectText(page.locator('#live-note'), /paused: 1 new/, 'paused');
  if (await page.locator(`#live-list li[data-id="${ids.paused}"]`).count()) throw new Error('shown while paused');
  await page.getByRole('button', { name: 'Resume' }).click();
  await page.locator(`#live-list li[data-id="${ids.paused}"]`).waitFor();
  await shot('05-live');

  step = 'test event, replay on reconnect';
  await tab('Settings').click();
  await page.locator('#test').waitFor();
  ids.test = await sendTestEvent();
  // Emitted to nobody while the live page is closed (seen in the log), so only the replay on
  // reconnection can bring it.
  await tab('Deliveries').click();
  await page.waitForFunction((id) => {
    const rows = [...document.querySelectorAll(`tr[data-event-id="${id}"][data-channel="websocket"]`)];
    return rows.length > 0 && rows.every((r) => r.dataset.status === 'delivered');
  }, ids.test);
  await tab('Live').click();
  await page.locator(`#live-list li[data-id="${ids.test}"]`).waitFor();
  await expectText(page.locator('#live-note'), /replayed 1 missed/, 'replay');

  step = 'delivered';
  await tab('Deliveries').click();
  for (const id of [ids.live, ids.paused, ids.test]) await deliveryRow(id, 'webhook', 'delivered');
  await shot('06-deliveries');

  step = 'receiver broken';
  await setReceiver(500);
  await tab('Settings').click();
  ids.failed = await sendTestEvent();
  ids.retried = await sendTestEvent();
  await tab('Deliveries').click();
  await deliveryRow(ids.retried, 'webhook', 'dead');
  const failed = await deliveryRow(ids.failed, 'webhook', 'dead');
  await failed.locator('summary').click();
  await expectText(failed.locator('ol.attempts li'), /HTTP 500/, 'the failed attempts');
  await page.locator('#f-channel').selectOption('webhook');
  await page.locator('#f-status').selectOption('dead');
  await page.getByRole('button', { name: 'Apply' }).click();
  // The filtered table: the two dead webhook deliveries only.
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('tr[data-delivery]')];
    return rows.length === 2 && rows.every((r) => r.dataset.status === 'dead' && r.dataset.channel === 'webhook');
  });
  await page.locator('[data-dead-channel=webhook]').waitFor();
  await shot('07-deliveries-failed');

  step = 'receiver fixed, retry one';
  await setReceiver(200);
  const retried = page.locator(`tr[data-event-id="${ids.retried}"][data-channel="webhook"]`);
  const retriedId = await retried.getAttribute('data-delivery');
  await retried.getByRole('button', { name: `Retry delivery ${retriedId}` }).click();
  await expectText(page.locator('#flash'), new RegExp(`Delivery ${retriedId} sent again`), 'retried');
  await page.locator('#f-status').selectOption('');
  await page.getByRole('button', { name: 'Apply' }).click();
  await deliveryRow(ids.retried, 'webhook', 'delivered');

  step = 'redrive the rest';
  await page.getByRole('button', { name: 'Redrive webhook' }).click();
  await expectText(page.locator('#flash'), /Sent 1 dead letter/, 'redriven');
  await deliveryRow(ids.failed, 'webhook', 'delivered');
  await page.locator('#no-dead').waitFor();
  await shot('08-deliveries-redriven');

  step = 'purge';
  await setReceiver(500);
  await tab('Settings').click();
  ids.purged = await sendTestEvent();
  await tab('Deliveries').click();
  await deliveryRow(ids.purged, 'webhook', 'dead');
  const purge = page.locator('[data-dead-channel=webhook]').getByRole('button', { name: /purge/i });
  await purge.click();
  await purge.click();
  await expectText(page.locator('#flash'), /Purged the webhook dead letters/, 'purged');
  await page.locator('#no-dead').waitFor();
  await page.locator(`tr[data-event-id="${ids.purged}"][data-channel="webhook"]`).waitFor({ state: 'detached' });
  await setReceiver(200);

  step = 'metrics';
  await page.getByRole('link', { name: 'Metrics' }).click();
  await expectText(page.locator('[data-health=webhook]'), /ok/, 'webhook health');
  await page.locator('#chart-backlog [data-series=webhook]').waitFor();
  // Events flowing while the page samples: the rate charts rise above zero.
  for (let i = 0; i < 24; i += 1) {
    await postEvent(`flow ${i}`);
    await page.waitForTimeout(250);
  }
  for (const chartId of ['chart-accepted', 'chart-delivered']) {
    await page.waitForFunction((id) => Number(document.getElementById(id).dataset.peak) > 0, chartId);
  }
  await page.locator('#chart-delivered [data-series=webhook]').waitFor();
  await page.waitForFunction(() => Number(document.getElementById('chart-accepted').dataset.samples) >= 4);
  await shot('09-metrics');

  step = 'phone';
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [hash, name] of [[`#/deliveries/${instance}`, '10-phone-deliveries'], [`#/instance/${instance}`, '11-phone-settings']]) {
    await page.goto(`${base}/console/${hash}`);
    await page.locator('main h1').waitFor();
    await page.waitForTimeout(500);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 1) throw new Error(`${hash} is ${overflow}px wider than a phone screen`);
    await shot(name);
  }
  await page.setViewportSize({ width: 1280, height: 900 });

  step = 'instance token';
  await signOut();
  await signIn(token);
  await expectText(page.locator('#who'), new RegExp(`instance ${instance}`), 'who');
  await page.locator('#channel-webhook').waitFor();
  await tab('Live').click();
  await expectText(page.locator('#live-status'), /connected/, 'Socket.IO with the instance token');
  ids.token = await postEvent('seen with the token');
  await page.locator(`#live-list li[data-id="${ids.token}"]`).waitFor();
  await page.goto(`${base}/console/#/instances`);
  await page.locator(`tr[data-instance="${instance}"]`).waitFor();
  if (await page.locator(`tr[data-instance="${other}"]`).count()) throw new Error('an instance token sees another instance');
  if (await page.locator('#create').count()) throw new Error('an instance token is offered to create instances');
  await shot('12-instance-token');
  refusalsExpected = true;
  for (const hash of [`#/instance/${other}`, `#/deliveries/${other}`]) {
    await page.goto(`${base}/console/${hash}`);
    await expectText(page.locator('.notice.bad, .form-error'), /another instance/, `${hash} with another instance's token`);
  }
  refusalsExpected = false;

  step = 'delete';
  await signOut();
  await signIn(apikey);
  await page.locator(`tr[data-instance="${other}"]`).waitFor();
  const del = page.getByRole('button', { name: `Delete instance ${other}` });
  await del.click();
  await del.click();
  await expectText(page.locator('#flash'), new RegExp(`Deleted ${other}`), 'deleted');
  if (await page.locator(`tr[data-instance="${other}"]`).count()) throw new Error('the deleted instance is still listed');

  step = 'end';
  if (errors.length) throw new Error(`console errors:\n${errors.join('\n')}`);
  process.stdout.write(`${JSON.stringify({ instance, other, ...ids })}\n`);
  await browser.close();
} catch (e) {
  log(`FAILED at step "${step}": ${e.message}`);
  if (errors.length) log(`console errors so far:\n${errors.join('\n')}`);
  await shot(`failed-${step.replace(/\W+/g, '-')}`).catch(() => {});
  await browser.close().catch(() => {});
  process.exit(1);
}
