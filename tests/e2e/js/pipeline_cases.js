// The data-driven stage and pipeline cases (tests/cases/pipeline/*.json, the
// same files tests/unit/test_pipeline.c runs through the engine directly),
// sent to a running aspen with the wire commands mongosh's sp.process uses:
//   {processStreamProcessor: [pipeline]}            -> {ok, name, cursorId}
//   {getMoreSampleStreamProcessor: name, cursorId}  -> {ok, cursorId, messages}
//   {dropStreamProcessor: name}
// Run by tests/e2e/test_pipeline_cases.sh with db = admin and
// ASPEN_CASES_DIR naming the folder of case files.
//
// Cases marked "persistent" go to {createStreamProcessor: <name>, pipeline}
// instead (with stages, a $merge into the testAtlas connection is appended,
// as in the unit runner; aspen must be configured with that connection when
// ASPEN_TEST_ATLAS=1, else they are skipped): an error case must fail at
// create with its code and message, an output case must be created (its
// output is not checked: that needs a reachable $merge target). Every
// created processor is dropped.
//
// A documents source never ends (it goes idle), so for each case the reader
// drains the sample cursor until the processor's stats show every input
// document ingested, at least as many messages as the case expects and
// every output and DLQ message delivered (twice in a row), or until ~2 s
// pass without progress. (Counting inputs alone settled too early: a
// document counts as input when it arrives, and the windows that the
// virtual clock closes once the input is over close after that, on the
// processor's thread, which a loaded machine can hold back for longer than
// two polls.) Actual documents lose `_ts` and
// `_stream_meta`, then are compared with the expected ones as canonical
// Extended JSON (relaxed: false), so field order and BSON types both count.
// Window cases: "source" adds options (timeField, ...) to the $source; an
// expected output's "_window" must equal the actual `_stream_meta.window`; a
// DLQ entry's "missedWindowStartTimes" must equal the entry's; "virtualClock"
// sends options {virtualClock: true}; "unitOnly" cases (Kafka partitions
// emulated by the unit runner) are skipped here.
// Prints one line per failing case and a summary; throws if anything failed.
'use strict';

const fs = require('fs');
const path = require('path');

const DIR = process.env.ASPEN_CASES_DIR;
if (!DIR) throw new Error('ASPEN_CASES_DIR is not set');
const ONLY = process.env.ASPEN_CASE_FILTER ? new RegExp(process.env.ASPEN_CASE_FILTER) : null;
const TEST_ATLAS = process.env.ASPEN_TEST_ATLAS === '1';
const MAX_MESSAGES = 10000;

const admin = db.getSiblingDB('admin');
// Replies with BSON types intact (Int32, Double, Long objects rather than JS
// numbers), so a double 2.0 is not mistaken for an int 2.
const RAW = { promoteValues: false, promoteLongs: false };

function canon(v) {
  return EJSON.stringify(v, { relaxed: false });
}

function strip(doc) {
  const out = {};
  for (const k of Object.keys(doc)) {
    if (k !== '_ts' && k !== '_stream_meta') out[k] = doc[k];
  }
  return out;
}

function str(v) {
  // A string from a reply read with promoteValues: false.
  return v === undefined || v === null ? '' : String(v);
}

function num(v) {
  if (v === undefined || v === null) return 0;
  if (typeof v === 'number') return v;
  if (typeof v.toNumber === 'function') return v.toNumber();
  if (typeof v.valueOf === 'function') return Number(v.valueOf());
  return Number(v);
}

function contains(text, want, exact) {
  const wants = Array.isArray(want) ? want : [want];
  const missing = [];
  for (const w of wants) {
    const s = str(w);
    if (exact && !Array.isArray(want) ? text !== s : !text.includes(s)) missing.push(s);
  }
  return missing;
}

// aspen unreachable (crashed, or a network failure): not a case result.
function isNetworkError(e) {
  return /Network|ServerSelection|TopologyClosed/.test(String(e && e.name));
}

function run(cmd) {
  return admin.runCommand(cmd, RAW);
}

function sourceDocs(c) {
  if (c.pipeline) {
    const src = c.pipeline[0] && c.pipeline[0].$source;
    return src && Array.isArray(src.documents) ? src.documents.length : 0;
  }
  return (c.input || []).length;
}

function pipelineOf(c) {
  if (c.pipeline) return c.pipeline;
  const p = [{ $source: Object.assign({ documents: c.input || [] }, c.source || {}) }].concat(c.stages || []);
  if (c.persistent === true) {
    p.push({ $merge: { into: { connectionName: 'testAtlas', db: 't', coll: 't' } } });
  }
  return p;
}

function checkError(c, e, why) {
  const code = c.code === undefined ? 420 : num(c.code);
  if (num(e.code) !== code) why.push('error code ' + e.code + ', expected ' + code + ' (' + e.message + ')');
  const msg = str(e.errmsg !== undefined ? e.errmsg : e.message);
  for (const m of contains(msg, c.error, false)) {
    why.push('errmsg should contain "' + m + '", got "' + msg + '"');
  }
}

// A persistent case: createStreamProcessor must refuse an error case and
// accept an output case.
let persistentSeq = 0;
function runPersistentCase(c) {
  const why = [];
  const name = 'pipeline_case_' + (++persistentSeq);
  let created = false;
  try {
    run({ createStreamProcessor: name, pipeline: pipelineOf(c) });
    created = true;
    if (c.error !== undefined) why.push('createStreamProcessor succeeded, but an error was expected: ' + canon(c.error));
  } catch (e) {
    if (isNetworkError(e)) throw e;
    if (c.error === undefined) {
      why.push('createStreamProcessor failed: ' + (e.code !== undefined ? 'code ' + e.code + ': ' : '') + e.message);
    } else {
      checkError(c, e, why);
    }
  }
  if (created) {
    try {
      run({ dropStreamProcessor: name });
    } catch (e) {
      if (isNetworkError(e)) throw e;
      why.push('dropStreamProcessor ' + name + ' failed: ' + e.message);
    }
  }
  return why;
}

// Drains the processor's sample cursor; returns the messages.
function collect(name, cursorId, nInput, nExpected) {
  const msgs = [];
  let idleSince = Date.now();
  let settled = 0;
  for (;;) {
    const r = run({ getMoreSampleStreamProcessor: name, cursorId });
    const batch = r.messages || [];
    for (const m of batch) msgs.push(m);
    cursorId = r.cursorId;
    if (String(cursorId) === '0' || msgs.length > MAX_MESSAGES) break;
    if (batch.length > 0) {
      idleSince = Date.now();
      settled = 0;
      continue;
    }
    let done = false;
    try {
      const st = run({ getStreamProcessorStats: name });
      const s = st.stats || st;
      const delivered = num(s.outputMessageCount) + num(s.dlqMessageCount);
      if (num(s.inputMessageCount) >= nInput && delivered >= nExpected && delivered <= msgs.length) {
        settled++;
        done = settled >= 2;
      } else {
        settled = 0;
      }
    } catch (e) {
      settled = 0;
    }
    if (done || Date.now() - idleSince > 2000) break;
    sleep(50);
  }
  return msgs;
}

// An expected output without its "_window" (the expected
// _stream_meta.window, checked apart).
function withoutWindow(d) {
  const out = {};
  for (const k of Object.keys(d)) {
    if (k !== '_window') out[k] = d[k];
  }
  return out;
}

function windowOf(d) {
  return d._stream_meta && d._stream_meta.window !== undefined ? canon(d._stream_meta.window) : '(none)';
}

function checkOutputs(c, outputs, dlqs, why) {
  const want = c.output.map((d) => canon(withoutWindow(d)));
  const got = outputs.map((d) => canon(strip(d)));
  if (want.length !== got.length || want.some((w, i) => w !== got[i])) {
    why.push('outputs differ');
    why.push('  expected (' + want.length + '):');
    for (const w of want) why.push('    ' + w);
    why.push('  actual (' + got.length + '):');
    outputs.forEach((d, i) => why.push('    ' + got[i] + (d._stream_meta && d._stream_meta.window ? '  window: ' + windowOf(d) : '')));
  } else {
    c.output.forEach((w, i) => {
      if (w._window === undefined) return;
      const ww = canon(w._window);
      const gw = windowOf(outputs[i]);
      if (ww !== gw) why.push('output[' + i + ']: _stream_meta.window: expected ' + ww + ', got ' + gw);
    });
  }
  const wantDlq = c.dlq || [];
  if (wantDlq.length !== dlqs.length) {
    why.push('expected ' + wantDlq.length + ' DLQ entries, got ' + dlqs.length);
    for (const d of dlqs) {
      why.push('    ' + str(d.operatorName) + ': ' + str(d.errInfo && d.errInfo.reason) +
               ' doc: ' + (d.doc ? canon(strip(d.doc)) : '(none)'));
    }
    return;
  }
  wantDlq.forEach((w, i) => {
    const d = dlqs[i];
    for (const k of ['_stream_meta', 'errInfo', 'operatorName', 'processorName', 'dlqTime']) {
      if (!(k in d)) why.push('dlq[' + i + '] has no ' + k);
    }
    if (w.operatorName !== undefined && str(w.operatorName) !== str(d.operatorName)) {
      why.push('dlq[' + i + '].operatorName: expected ' + str(w.operatorName) + ', got ' + str(d.operatorName));
    }
    const reason = str(d.errInfo && d.errInfo.reason);
    if (w.reason !== undefined) {
      const miss = contains(reason, w.reason, w.exactReason === true || String(w.exactReason) === 'true');
      for (const m of miss) why.push('dlq[' + i + '].reason should contain "' + m + '", got "' + reason + '"');
    }
    if (w.doc !== undefined) {
      const wd = canon(w.doc);
      const gd = d.doc ? canon(strip(d.doc)) : '(none)';
      if (wd !== gd) why.push('dlq[' + i + '].doc: expected ' + wd + ', got ' + gd);
    }
    if (w.missedWindowStartTimes !== undefined) {
      const wm = canon(w.missedWindowStartTimes);
      const gm = d.missedWindowStartTimes !== undefined ? canon(d.missedWindowStartTimes) : '(none)';
      if (wm !== gm) why.push('dlq[' + i + '].missedWindowStartTimes: expected ' + wm + ', got ' + gm);
    }
  });
}

function runCase(c) {
  const why = [];
  const pipeline = pipelineOf(c);
  let reply;
  const cmd = { processStreamProcessor: pipeline };
  if (c.virtualClock === true) cmd.options = { virtualClock: true };
  try {
    reply = run(cmd);
  } catch (e) {
    if (isNetworkError(e)) throw e;
    if (c.error === undefined) {
      why.push('processStreamProcessor failed: ' + (e.code !== undefined ? 'code ' + e.code + ': ' : '') + e.message);
      return why;
    }
    checkError(c, e, why);
    return why;
  }
  const name = str(reply.name);
  try {
    if (c.error !== undefined) {
      why.push('processStreamProcessor succeeded, but an error was expected: ' + canon(c.error));
      return why;
    }
    const msgs = collect(name, reply.cursorId, sourceDocs(c), (c.output || []).length + (c.dlq || []).length);
    const outputs = [];
    const dlqs = [];
    for (const m of msgs) {
      if (m._dlqMessage !== undefined) dlqs.push(m._dlqMessage);
      else outputs.push(m);
    }
    for (const o of outputs) {
      // _ts is a plain field from the source on: a stage may drop it
      // ($project inclusion, $replaceRoot); where it is there, it is a Date.
      if ('_ts' in o && !(o._ts instanceof Date)) why.push('_ts is not a Date: ' + canon(o));
      const meta = o._stream_meta;
      if (!meta || !meta.source || str(meta.source.type) !== 'generated') {
        why.push('an output has no _stream_meta.source.type "generated": ' + canon(o));
      }
    }
    checkOutputs(c, outputs, dlqs, why);
  } finally {
    try {
      run({ dropStreamProcessor: name });
    } catch (e) {
      if (!isNetworkError(e)) why.push('dropStreamProcessor ' + name + ' failed: ' + e.message);
    }
  }
  return why;
}

const files = fs.readdirSync(DIR).filter((f) => f.endsWith('.json')).sort();
if (files.length === 0) throw new Error('no case files in ' + DIR);
let total = 0;
let passed = 0;
let skipped = 0;
const failures = [];
for (const f of files) {
  const cases = EJSON.parse(fs.readFileSync(path.join(DIR, f), 'utf8'), { relaxed: false });
  let fPassed = 0;
  let fFailed = 0;
  let fSkipped = 0;
  for (const c of cases) {
    const label = f + ': ' + c.name;
    if (ONLY && !ONLY.test(label)) continue;
    if ((c.persistent === true && !TEST_ATLAS) || c.unitOnly === true) {
      fSkipped++;
      continue;
    }
    total++;
    let why;
    try {
      why = c.persistent === true ? runPersistentCase(c) : runCase(c);
    } catch (e) {
      // aspen gone (crashed): every later case would only wait for server
      // selection, so stop here.
      if (isNetworkError(e)) {
        print('FAIL ' + label);
        print('    aspen is unreachable (' + e.name + ': ' + e.message + '); stopping');
        throw new Error('aspen became unreachable during "' + label + '"');
      }
      why = ['threw: ' + (e.stack || e.message)];
    }
    if (why.length === 0) {
      fPassed++;
    } else {
      fFailed++;
      failures.push(label);
      print('FAIL ' + label);
      for (const w of why) print('    ' + w);
    }
  }
  passed += fPassed;
  skipped += fSkipped;
  print('# ' + f + ': ' + fPassed + ' passed, ' + fFailed + ' failed' +
        (fSkipped ? ', ' + fSkipped + ' skipped (persistent or unitOnly)' : ''));
}
print('# pipeline cases: ' + total + ' run, ' + passed + ' passed, ' + failures.length + ' failed' +
      (skipped ? ', ' + skipped + ' skipped (persistent or unitOnly)' : ''));
if (failures.length > 0) {
  throw new Error(failures.length + ' pipeline case(s) failed: ' + failures.join('; '));
}
