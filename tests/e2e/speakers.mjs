// NOT YET RUN, so not called from e2e.mjs: every test-app.sh run that would
// have reached it stopped earlier, in another step. To enable it, import it in
// e2e.mjs and call `await speakersStep({ browser, tab, shot, log, fail, work })`
// after rawRecordingsStep, then run scripts/test-app.sh.
//
// E2E step of e2e.mjs: a dataset with two speakers (issue 20). Two espeak-ng
// voices, one folder each (DATA/alice, DATA/bob: audio/ + transcripts/), are
// dropped on the window for real (raw-recordings.mjs's XDND drag). The
// Dataset screen lists both speakers with the core's counts; an id is set and
// saved, and speakers.json is checked on disk; the command line on
// Parameters reads the folder as --data-dir.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dropFolder } from './raw-recordings.mjs';

const SENTENCES = ['The river was quiet in the morning.', 'We carried the boxes up the stairs.'];

/** DATA/<speaker>/{audio,transcripts} for two espeak-ng voices. */
function twoVoices(root) {
  const data = join(root, 'two-voices');
  for (const [speaker, voice] of [['alice', 'en-us'], ['bob', 'en-us+f3']]) {
    mkdirSync(join(data, speaker, 'audio'), { recursive: true });
    mkdirSync(join(data, speaker, 'transcripts'), { recursive: true });
    SENTENCES.forEach((text, i) => {
      const name = `00${i + 1}`;
      execFileSync('espeak-ng', ['-v', voice, '-s', '150', '-w', join(data, speaker, 'audio', `${name}.wav`), text]);
      writeFileSync(join(data, speaker, 'transcripts', `${name}.txt`), `${text}\n`);
    });
  }
  return data;
}

export async function speakersStep({ browser, tab, shot, log, fail, work }) {
  const data = twoVoices(work);
  await tab('Dataset');
  await dropFolder(data, log);
  const table = () => browser.$('[data-testid="speakers-table"]');
  const rowTexts = async () => {
    const rows = await (await table()).$$('tbody tr');
    const out = [];
    for (const r of rows) out.push((await r.getText()).replace(/\s+/g, ' ').trim());
    return out;
  };
  // The counts come from the core's usage report once the audio is measured.
  await browser.waitUntil(
    async () => {
      if (!(await (await table()).isExisting())) return false;
      const rows = await rowTexts();
      return rows.length === 2 && rows.every((r) => !r.includes('—'));
    },
    { timeout: 120_000, interval: 500, timeoutMsg: `no speakers with counts: ${await browser.$('[data-testid="speakers"]').getText().catch(() => '')}` },
  );
  const rows = await rowTexts();
  log(`speakers: ${rows.join(' | ')}`);
  if (!rows[0].startsWith('alice 0 2 2') || !rows[1].startsWith('bob 1 2 2')) {
    fail(`expected alice and bob with ids 0 and 1, 2 recordings and 2 utterances each: ${rows.join(' | ')}`);
  }
  await (await browser.$('[data-testid="speakers-edit"]')).click();
  const bobId = await browser.$('input[aria-label="Id of bob"]');
  await bobId.waitForExist({ timeout: 10_000 });
  await bobId.setValue('7');
  await (await browser.$('[data-testid="speakers-save"]')).click();
  const file = join(data, 'speakers.json');
  await browser.waitUntil(() => existsSync(file), { timeout: 30_000, timeoutMsg: `no ${file}: ${await browser.$('[data-testid="speakers"]').getText().catch(() => '')}` });
  const saved = JSON.parse(readFileSync(file, 'utf8'));
  if (JSON.stringify(saved) !== JSON.stringify({ speakers: { bob: 7 } })) fail(`${file} holds ${JSON.stringify(saved)}`);
  await browser.waitUntil(async () => (await rowTexts()).some((r) => r.startsWith('bob 7 ')), {
    timeout: 60_000,
    interval: 500,
    timeoutMsg: `bob's new id is not shown: ${(await rowTexts()).join(' | ')}`,
  });
  log(`saved ${file}: ${JSON.stringify(saved)}; ${(await rowTexts()).join(' | ')}`);
  await shot('app-speakers.png');
  await tab('Parameters');
  const command = await (await browser.$('[data-testid="command"]')).getText();
  if (!command.includes(`--data-dir ${data}`)) fail(`the command line does not read the folder as --data-dir: ${command}`);
}
