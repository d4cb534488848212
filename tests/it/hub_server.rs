//! A Hub stand-in: the endpoints the hf-hub 1.0 client calls to create a repo, publish one
//! commit and download files, served by a std::net HTTP/1.1 server on 127.0.0.1 (port 0),
//! one thread per connection, `Connection: close`. Repos live in memory as a list of
//! commits (each a full file table) and branch heads.
//!
//! | request | answer |
//! |---|---|
//! | `POST /api/repos/create` | 200 `{url}`, 409 if it exists |
//! | `GET /api/models/{repo}[/revision/{rev}]` | model info `{id, sha, private, siblings}`; 404 + `X-Error-Code` |
//! | `POST /api/models/{repo}/preupload/{rev}` | every file `regular` (so hf-hub sends it inline) |
//! | `POST /api/models/{repo}/commit/{rev}` | NDJSON: `header` (`parentCommit` checked: 412), `file` (base64), `lfsFile` (an object already stored), `deletedFile` |
//! | `POST /api/models/{repo}/branch/{name}` | a branch from `startingPoint` |
//! | `POST /api/models/{repo}/paths-info/{rev}`, `GET .../tree/{rev}[/{path}]` | file / directory entries |
//! | `HEAD`/`GET /{repo}/resolve/{rev}/{path}` | `ETag`, `X-Repo-Commit`, `Content-Length`; 404 + `X-Error-Code` |
//!
//! Writes need `Authorization: Bearer <write token>`; a wrong token is 401 anywhere, a
//! read token is 403 on writes. Hooks: refuse inline files over a size (as the real Hub
//! refuses binaries sent inline), push a concurrent commit just before the next commit
//! request, fail the next N requests with a status.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[derive(Clone)]
struct Blob {
    data: Arc<Vec<u8>>,
    sha256: String,
    /// Stored as an LFS object (came in as an `lfsFile` pointer).
    lfs: bool,
}

#[derive(Clone)]
struct CommitObj {
    sha: String,
    files: BTreeMap<String, Blob>,
}

struct Repo {
    private: bool,
    commits: Vec<CommitObj>,
    branches: HashMap<String, String>,
}

impl Repo {
    fn commit(&self, rev: &str) -> Option<&CommitObj> {
        let sha = self.branches.get(rev).map(String::as_str).unwrap_or(rev);
        self.commits.iter().find(|c| c.sha == sha)
    }
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    /// LFS objects by sha256 (what `lfsFile` entries may point to).
    lfs: HashMap<String, Blob>,
    counter: u64,
    /// Every request: `METHOD path`.
    log: Vec<String>,
    max_inline: Option<usize>,
    race_next_commit: bool,
    fail_next: Option<(u16, usize)>,
}

impl State {
    fn new_sha(&mut self, seed: &str) -> String {
        self.counter += 1;
        sha256_hex(format!("{seed}/{}", self.counter).as_bytes())[..40].to_string()
    }

    /// Add a commit on `branch` with `files` changed (None deletes).
    fn push(&mut self, repo: &str, branch: &str, changes: Vec<(String, Option<Blob>)>) -> String {
        let sha = self.new_sha(repo);
        let r = self.repos.get_mut(repo).expect("repo");
        let mut files = r
            .commit(branch)
            .map(|c| c.files.clone())
            .unwrap_or_default();
        for (path, blob) in changes {
            match blob {
                Some(b) => files.insert(path, b),
                None => files.remove(&path),
            };
        }
        r.commits.push(CommitObj {
            sha: sha.clone(),
            files,
        });
        r.branches.insert(branch.to_string(), sha.clone());
        sha
    }
}

/// The running stand-in.
pub struct HubServer {
    pub url: String,
    state: Arc<Mutex<State>>,
    pub write_token: String,
    pub read_token: String,
}

fn blob(data: Vec<u8>, lfs: bool) -> Blob {
    Blob {
        sha256: sha256_hex(&data),
        data: Arc::new(data),
        lfs,
    }
}

impl HubServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = Self {
            url,
            state: Arc::new(Mutex::new(State::default())),
            write_token: "hf_standinWRITEtoken0123456789abcdef".into(),
            read_token: "hf_standinREADtoken0123456789abcdef".into(),
        };
        let (state, w, r) = (
            server.state.clone(),
            server.write_token.clone(),
            server.read_token.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (state, w, r) = (state.clone(), w.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &state, &w, &r);
                });
            }
        });
        server
    }

    /// Commits on a repo (the initial one included).
    pub fn commits(&self, repo: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .repos
            .get(repo)
            .map_or(0, |r| r.commits.len())
    }
    /// The head of a branch.
    pub fn head(&self, repo: &str, branch: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .repos
            .get(repo)?
            .branches
            .get(branch)
            .cloned()
    }
    /// Whether a repo was created private.
    pub fn is_private(&self, repo: &str) -> Option<bool> {
        self.state
            .lock()
            .unwrap()
            .repos
            .get(repo)
            .map(|r| r.private)
    }
    /// A file's bytes at a revision.
    pub fn file(&self, repo: &str, rev: &str, path: &str) -> Option<Vec<u8>> {
        let s = self.state.lock().unwrap();
        Some(
            s.repos
                .get(repo)?
                .commit(rev)?
                .files
                .get(path)?
                .data
                .to_vec(),
        )
    }
    /// Every request so far (`METHOD path`).
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
    /// Someone else commits `path` on `branch`.
    pub fn external_commit(&self, repo: &str, branch: &str, path: &str, data: &[u8]) -> String {
        self.state.lock().unwrap().push(
            repo,
            branch,
            vec![(path.into(), Some(blob(data.to_vec(), false)))],
        )
    }
    /// Refuse commits with an inline file over `bytes`, as the real Hub refuses binaries.
    pub fn refuse_inline_over(&self, bytes: usize) {
        self.state.lock().unwrap().max_inline = Some(bytes);
    }
    /// Just before the next commit request is handled, someone else pushes to its branch.
    pub fn race_next_commit(&self) {
        self.state.lock().unwrap().race_next_commit = true;
    }
    /// Answer the next `n` requests with `status`.
    pub fn fail_next(&self, status: u16, n: usize) {
        self.state.lock().unwrap().fail_next = Some((status, n));
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn json_response(status: u16, v: &Value) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: serde_json::to_vec(v).unwrap(),
    }
}

fn error(status: u16, code: &str, msg: &str) -> Response {
    let mut r = json_response(status, &json!({ "error": msg }));
    r.headers.push(("X-Error-Code".into(), code.into()));
    r.headers.push(("X-Error-Message".into(), msg.into()));
    r
}

fn read_request(conn: &mut BufReader<TcpStream>) -> std::io::Result<Request> {
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        conn.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

fn serve(
    stream: TcpStream,
    state: &Mutex<State>,
    write_token: &str,
    read_token: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let req = read_request(&mut reader)?;
    let resp = handle(&req, state, write_token, read_token);
    let mut out = stream;
    let reason = match resp.status {
        200 => "OK",
        404 => "Not Found",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if req.method != "HEAD" {
        out.write_all(&resp.body)?;
    }
    out.flush()
}

/// `%2F` → `/` etc.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(PartialEq)]
enum Auth {
    None,
    Read,
    Write,
    Bad,
}

fn handle(req: &Request, state: &Mutex<State>, write_token: &str, read_token: &str) -> Response {
    let mut s = state.lock().unwrap();
    s.log.push(format!("{} {}", req.method, req.path));
    if let Some((status, n)) = s.fail_next {
        s.fail_next = (n > 1).then_some((status, n - 1));
        return error(status, "Injected", "injected failure");
    }
    let auth = match req.headers.get("authorization").map(String::as_str) {
        None => Auth::None,
        Some(h) if h == format!("Bearer {write_token}") => Auth::Write,
        Some(h) if h == format!("Bearer {read_token}") => Auth::Read,
        Some(_) => Auth::Bad,
    };
    if auth == Auth::Bad {
        return error(
            401,
            "Unauthorized",
            "Invalid credentials in Authorization header",
        );
    }
    let segs: Vec<String> = req
        .path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(decode)
        .collect();
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    let need_write = |auth: &Auth| -> Option<Response> {
        match auth {
            Auth::Write => None,
            Auth::None => Some(error(
                401,
                "Unauthorized",
                "You must be authenticated to access this resource",
            )),
            _ => Some(error(
                403,
                "Forbidden",
                "You don't have the rights to write to this repo",
            )),
        }
    };
    match (req.method.as_str(), seg.as_slice()) {
        ("POST", ["api", "repos", "create"]) => {
            if let Some(r) = need_write(&auth) {
                return r;
            }
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let id = format!(
                "{}/{}",
                body["organization"].as_str().unwrap_or("me"),
                body["name"].as_str().unwrap_or("")
            );
            if s.repos.contains_key(&id) {
                return error(409, "Conflict", "You already created this model repo");
            }
            s.repos.insert(
                id.clone(),
                Repo {
                    private: body["private"].as_bool().unwrap_or(false),
                    commits: vec![],
                    branches: HashMap::new(),
                },
            );
            let attrs = blob(
                b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n".to_vec(),
                false,
            );
            s.push(&id, "main", vec![(".gitattributes".into(), Some(attrs))]);
            json_response(200, &json!({ "url": format!("http://hub/{id}") }))
        }
        (m, ["api", "models", owner, name, rest @ ..]) => {
            let id = format!("{owner}/{name}");
            let Some(repo) = s.repos.get(&id) else {
                return error(404, "RepoNotFound", "Repository not found");
            };
            if repo.private && auth == Auth::None {
                return error(401, "RepoNotFound", "Repository not found");
            }
            match (m, rest) {
                ("GET", []) => info(&id, repo, "main"),
                ("GET", ["revision", rev]) => info(&id, repo, rev),
                ("POST", ["preupload", _rev]) => {
                    let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                    let files: Vec<Value> = body["files"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|f| json!({ "path": f["path"], "uploadMode": "regular", "shouldIgnore": false }))
                        .collect();
                    json_response(200, &json!({ "files": files }))
                }
                ("POST", ["commit", rev]) => {
                    if let Some(r) = need_write(&auth) {
                        return r;
                    }
                    commit(&mut s, &id, rev, &req.body)
                }
                ("POST", ["branch", branch]) => {
                    if let Some(r) = need_write(&auth) {
                        return r;
                    }
                    let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                    let from = body["startingPoint"].as_str().unwrap_or("main");
                    let repo = s.repos.get_mut(&id).unwrap();
                    let Some(sha) = repo.commit(from).map(|c| c.sha.clone()) else {
                        return error(404, "RevisionNotFound", "Invalid rev id");
                    };
                    repo.branches.insert(branch.to_string(), sha);
                    json_response(200, &json!({}))
                }
                ("POST", ["paths-info", rev]) => {
                    let Some(c) = repo.commit(rev) else {
                        return error(404, "RevisionNotFound", "Invalid rev id");
                    };
                    let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                    let mut out = Vec::new();
                    for p in body["paths"].as_array().cloned().unwrap_or_default() {
                        let p = p.as_str().unwrap_or_default().trim_matches('/').to_string();
                        if let Some(b) = c.files.get(&p) {
                            out.push(file_entry(&p, b));
                        } else if c.files.keys().any(|k| k.starts_with(&format!("{p}/"))) {
                            out.push(json!({ "type": "directory", "oid": sha256_hex(p.as_bytes())[..40], "path": p }));
                        }
                    }
                    json_response(200, &Value::Array(out))
                }
                ("GET", ["tree", rev, path @ ..]) => {
                    let Some(c) = repo.commit(rev) else {
                        return error(404, "RevisionNotFound", "Invalid rev id");
                    };
                    let prefix = if path.is_empty() {
                        String::new()
                    } else {
                        format!("{}/", path.join("/"))
                    };
                    let recursive = req.query.contains("recursive=true");
                    let mut out = Vec::new();
                    let mut dirs = std::collections::BTreeSet::new();
                    for (p, b) in c.files.range(prefix.clone()..) {
                        let Some(rest) = p.strip_prefix(&prefix) else {
                            break;
                        };
                        match rest.split_once('/') {
                            Some((d, _)) if !recursive => {
                                dirs.insert(format!("{prefix}{d}"));
                            }
                            _ => out.push(file_entry(p, b)),
                        }
                    }
                    for d in dirs {
                        out.push(json!({ "type": "directory", "oid": sha256_hex(d.as_bytes())[..40], "path": d }));
                    }
                    if out.is_empty() && !prefix.is_empty() {
                        return error(404, "EntryNotFound", "Entry not found");
                    }
                    json_response(200, &Value::Array(out))
                }
                _ => error(404, "NotFound", "no such endpoint in the stand-in"),
            }
        }
        ("HEAD" | "GET", [owner, name, "resolve", rev, path @ ..]) => {
            let id = format!("{owner}/{name}");
            let Some(repo) = s.repos.get(&id) else {
                return error(404, "RepoNotFound", "Repository not found");
            };
            if repo.private && auth == Auth::None {
                return error(401, "RepoNotFound", "Repository not found");
            }
            let Some(c) = repo.commit(rev) else {
                return error(404, "RevisionNotFound", "Invalid rev id");
            };
            let path = path.join("/");
            let Some(b) = c.files.get(&path) else {
                let mut r = error(404, "EntryNotFound", "Entry not found");
                r.headers.push(("X-Repo-Commit".into(), c.sha.clone()));
                return r;
            };
            Response {
                status: 200,
                headers: vec![
                    ("ETag".into(), format!("\"{}\"", b.sha256)),
                    ("X-Repo-Commit".into(), c.sha.clone()),
                    ("Content-Type".into(), "application/octet-stream".into()),
                ],
                body: b.data.to_vec(),
            }
        }
        _ => error(404, "NotFound", "no such endpoint in the stand-in"),
    }
}

fn info(id: &str, repo: &Repo, rev: &str) -> Response {
    let Some(c) = repo.commit(rev) else {
        return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    };
    let siblings: Vec<Value> = c.files.keys().map(|k| json!({ "rfilename": k })).collect();
    json_response(
        200,
        &json!({ "id": id, "_id": id, "sha": c.sha, "private": repo.private, "siblings": siblings, "library_name": "relay" }),
    )
}

fn file_entry(path: &str, b: &Blob) -> Value {
    let mut v =
        json!({ "type": "file", "oid": &b.sha256[..40], "size": b.data.len(), "path": path });
    if b.lfs {
        v["lfs"] = json!({ "oid": b.sha256, "sha256": b.sha256, "size": b.data.len(), "pointer_size": 134 });
    }
    v
}

fn commit(s: &mut State, id: &str, rev: &str, body: &[u8]) -> Response {
    if std::mem::take(&mut s.race_next_commit) {
        let other = blob(b"pushed by someone else\n".to_vec(), false);
        s.push(id, rev, vec![("NOTES.md".into(), Some(other))]);
    }
    let head = s.repos[id].branches.get(rev).cloned();
    let Some(head) = head else {
        return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    };
    let mut changes = Vec::new();
    let mut summary = String::new();
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return error(400, "BadRequest", "invalid NDJSON line");
        };
        let val = &v["value"];
        match v["key"].as_str() {
            Some("header") => {
                summary = val["summary"].as_str().unwrap_or_default().to_string();
                if let Some(parent) = val["parentCommit"].as_str() {
                    if parent != head {
                        return error(
                            412,
                            "PreconditionFailed",
                            "A commit has happened since. Please refresh and try again.",
                        );
                    }
                }
            }
            Some("file") => {
                let data = match base64::engine::general_purpose::STANDARD
                    .decode(val["content"].as_str().unwrap_or_default())
                {
                    Ok(d) => d,
                    Err(_) => return error(400, "BadRequest", "bad base64"),
                };
                if s.max_inline.is_some_and(|m| data.len() > m) {
                    return error(
                        400,
                        "BadRequest",
                        "Your push was rejected because it contains binary files. Please use https://huggingface.co/docs/hub/xet to store binary files.",
                    );
                }
                changes.push((
                    val["path"].as_str().unwrap_or_default().to_string(),
                    Some(blob(data, false)),
                ));
            }
            Some("lfsFile") => {
                let oid = val["oid"].as_str().unwrap_or_default();
                let Some(b) = s.lfs.get(oid).cloned() else {
                    return error(
                        422,
                        "UnprocessableEntity",
                        &format!("LFS object {oid} was not uploaded"),
                    );
                };
                changes.push((
                    val["path"].as_str().unwrap_or_default().to_string(),
                    Some(b),
                ));
            }
            Some("deletedFile") => {
                changes.push((val["path"].as_str().unwrap_or_default().to_string(), None))
            }
            _ => return error(400, "BadRequest", "unknown NDJSON key"),
        }
    }
    // Every object the Hub holds can be named by a later `lfsFile` pointer.
    for b in changes.iter().filter_map(|(_, b)| b.as_ref()) {
        s.lfs.insert(
            b.sha256.clone(),
            Blob {
                lfs: true,
                ..b.clone()
            },
        );
    }
    let sha = s.push(id, rev, changes);
    json_response(
        200,
        &json!({ "commitUrl": format!("http://hub/{id}/commit/{sha}"), "commitOid": sha, "commitMessage": summary, "success": true }),
    )
}
