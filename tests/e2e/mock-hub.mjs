// A mock Hugging Face hub on 127.0.0.1 for the end-to-end test: the hub
// itself on a port chosen before the app starts (the app reads HF_ENDPOINT
// when it starts), and a second server on another port acting as the CDN
// that LFS files redirect to. It speaks what csm-hub's client uses, as the
// Rust mock of csm-hub's tests does (crates/csm-hub/tests/support/mock_hub.rs):
//   HEAD/GET /{org}/{name}/resolve/{rev}/{file}  302 to the CDN for LFS files
//     (X-Linked-Etag = sha256, X-Linked-Size), 200 for git files (ETag = git
//     blob sha1), X-Repo-Commit; 401/403 X-Error-Code: GatedRepo, 404
//     RepoNotFound / RevisionNotFound / EntryNotFound
//   GET /api/models/{org}/{name}/revision/{rev}  {sha, siblings}
//   CDN GET /lfs/{sha256}?sig=...  with Range (206 + Content-Range)
// Files are streamed from disk (the demo model is ~400 MB), registered after
// the app has built them. The test throttles bodies to cancel mid-download,
// holds a file's transfer (a byte a second) to keep a download in progress,
// reads every request (method, path, Range, Authorization) and the body bytes
// each GET sent, per file.
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function sha256File(path) {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk);
  return h.digest('hex');
}

/** `git hash-object` of a file's bytes. */
function gitSha1(data) {
  return createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
}

const commitOf = (repo) => createHash('sha1').update(`commit of ${repo}`).digest('hex');

export class MockHub {
  /** Starts the hub on `port` (0: any) and the CDN on any free port. */
  static async start(port) {
    const hub = new MockHub();
    hub.cdnServer = createServer((q, s) => hub.#handle('cdn', q, s).catch((e) => hub.#fail(s, e)));
    hub.hubServer = createServer((q, s) => hub.#handle('hub', q, s).catch((e) => hub.#fail(s, e)));
    const listen = (server, p) =>
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(p, '127.0.0.1', () => resolve(server.address().port));
      });
    hub.url = `http://127.0.0.1:${await listen(hub.hubServer, port)}`;
    hub.cdnUrl = `http://127.0.0.1:${await listen(hub.cdnServer, 0)}`;
    return hub;
  }

  files = [];
  gated = new Map();
  /** Sleep this long per 16 KiB of body (0: full speed). */
  throttleMs = 0;
  /** Files whose bodies trickle (a byte a second, never the last one) until released. */
  held = new Set();
  /** Every request: {server, method, path, range, authorization}. */
  requests = [];
  /** Body bytes sent per GET, by file name. */
  served = new Map();

  /** Serves the file at `path` as `file` of `repo` (an LFS file unless `lfs` is false). */
  async serve(repo, file, path, { lfs = true } = {}) {
    const size = (await stat(path)).size;
    const etag = lfs ? await sha256File(path) : gitSha1(await readFile(path));
    this.files.push({ repo, file, path, lfs, size, etag });
  }

  /** `repo` answers 401 without a token and 403 with another one than `token`. */
  gate(repo, token) {
    this.gated.set(repo, token);
  }

  throttle(ms) {
    this.throttleMs = ms;
  }

  /**
   * Holds the transfers of `file` (by name) under way and to come: a byte a
   * second, so the client's read timeout never fires and the download stays
   * in progress for as long as the test needs; `release` lets them finish.
   */
  hold(file) {
    this.held.add(file);
  }

  release(file) {
    this.held.delete(file);
  }

  async close() {
    await Promise.all([this.hubServer, this.cdnServer].map((s) => new Promise((r) => s.close(r))));
  }

  #fail(res, e) {
    console.error(`[mock hub] ${e.stack ?? e}`);
    if (!res.headersSent) res.writeHead(500).end();
    else res.destroy();
  }

  async #handle(server, req, res) {
    const url = new URL(req.url, 'http://mock');
    this.requests.push({
      server,
      method: req.method,
      path: url.pathname,
      range: req.headers.range ?? null,
      authorization: req.headers.authorization ?? null,
    });
    if (server === 'cdn') {
      const sha = url.pathname.startsWith('/lfs/') ? url.pathname.slice(5) : null;
      const f = this.files.find((x) => x.lfs && x.etag === sha);
      if (!f || !url.searchParams.get('sig')) return res.writeHead(f ? 403 : 404).end();
      return this.#content(f, req, res, {});
    }
    const error = (status, code, extra = {}) =>
      res.writeHead(status, { 'X-Error-Code': code, 'X-Error-Message': `${code} (mock)`, 'Content-Length': 0, ...extra }).end();
    const parts = url.pathname.slice(1).split('/').map(decodeURIComponent);
    const api = parts[0] === 'api' && parts[1] === 'models';
    const rest = api ? parts.slice(2) : parts;
    if (rest.length < 4) return res.writeHead(404).end();
    const repo = `${rest[0]}/${rest[1]}`;
    const token = req.headers.authorization?.replace(/^Bearer /, '') ?? null;
    if (!this.files.some((f) => f.repo === repo)) return error(token ? 404 : 401, 'RepoNotFound');
    if (this.gated.has(repo)) {
      if (token === null) return error(401, 'GatedRepo');
      if (token !== this.gated.get(repo)) return error(403, 'GatedRepo');
    }
    const commit = commitOf(repo);
    const [kind, revision] = [rest[2], rest[3]];
    if ((api && kind !== 'revision') || (!api && kind !== 'resolve')) return res.writeHead(404).end();
    if (revision !== 'main' && revision !== commit) return error(404, 'RevisionNotFound');
    if (api) {
      const body = JSON.stringify({
        id: repo,
        sha: commit,
        siblings: this.files.filter((f) => f.repo === repo).map((f) => ({ rfilename: f.file })),
      });
      return res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) }).end(body);
    }
    const name = rest.slice(4).join('/');
    const f = this.files.find((x) => x.repo === repo && x.file === name);
    if (!f) return error(404, 'EntryNotFound', { 'X-Repo-Commit': commit });
    if (f.lfs) {
      return res
        .writeHead(302, {
          Location: `${this.cdnUrl}/lfs/${f.etag}?sig=e2e`,
          'X-Repo-Commit': commit,
          'X-Linked-Etag': `"${f.etag}"`,
          'X-Linked-Size': String(f.size),
          ETag: `"${gitSha1(Buffer.from('pointer'))}"`,
          'Content-Length': 0,
        })
        .end();
    }
    return this.#content(f, req, res, { 'X-Repo-Commit': commit, ETag: `"${f.etag}"` });
  }

  /** The file's bytes from `Range: bytes=N-` on, paced by the throttle; counts what was sent. */
  async #content(f, req, res, headers) {
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    if (start >= f.size && m) return res.writeHead(416, { 'Content-Range': `bytes */${f.size}`, 'Content-Length': 0 }).end();
    res.writeHead(m ? 206 : 200, {
      ...headers,
      'Accept-Ranges': 'bytes',
      'Content-Length': f.size - start,
      ...(m ? { 'Content-Range': `bytes ${start}-${f.size - 1}/${f.size}` } : {}),
    });
    if (req.method === 'HEAD') return res.end();
    let closed = false;
    res.on('close', () => (closed = true));
    let sent = 0;
    const fh = await open(f.path, 'r');
    try {
      let pos = start;
      while (pos < f.size && !closed) {
        if (this.held.has(f.file)) {
          await sleep(1000);
          if (closed || !this.held.has(f.file) || pos >= f.size - 1) continue;
          const one = Buffer.alloc(1);
          await fh.read(one, 0, 1, pos);
          res.write(one);
          sent += 1;
          pos += 1;
          continue;
        }
        const n = Math.min(this.throttleMs > 0 ? 16 << 10 : 256 << 10, f.size - pos);
        const buf = Buffer.alloc(n);
        const { bytesRead } = await fh.read(buf, 0, n, pos);
        if (bytesRead === 0) break;
        if (this.throttleMs > 0) await sleep(this.throttleMs);
        if (closed) break;
        const more = res.write(buf.subarray(0, bytesRead));
        sent += bytesRead;
        pos += bytesRead;
        if (!more && !closed) {
          await new Promise((resolve) => {
            const done = () => {
              res.off('drain', done);
              res.off('close', done);
              resolve();
            };
            res.on('drain', done);
            res.on('close', done);
          });
        }
      }
    } finally {
      await fh.close();
      (this.served.get(f.file) ?? this.served.set(f.file, []).get(f.file)).push(sent);
      if (!closed) res.end();
    }
  }
}
