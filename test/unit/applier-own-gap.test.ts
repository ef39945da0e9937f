// A stream that dropped only this node's own messages before it applied them back misses nothing: the applier moves
// past them. Any other node's message among them and it does not (a snapshot must bring those changes).

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Applier } from "../../src/sqlite/applier.js";
import { installCapture } from "../../src/sqlite/capture.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { createDb, recordingLogger, removeTempDirs, sqlite3, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

const STREAM = "marmot-changes-1-1";

function node(origin: string | undefined) {
  const path = createDb(join(tempDir(), "app.sqlite"), "CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL);");
  const db = openDatabase(path, recordingLogger());
  const captured = installCapture(db, recordingLogger());
  const applier = new Applier(db, recordingLogger(), origin === undefined ? {} : { origin });
  applier.setTables(captured.tables);
  return { path, db, applier };
}

describe("Applier.passOwnGap", () => {
  it("moves past a dropped range that JetStream stored for this node, recording the sequence in the database", () => {
    const { path, db, applier } = node("1");
    for (const seq of [5, 6, 7]) applier.noteStored(STREAM, seq, [`row-${seq}`]);
    assert.equal(applier.passOwnGap(STREAM, 5, 7), true);
    assert.equal(applier.appliedSequence(STREAM), 7);
    db.close();
    assert.equal(sqlite3(path, `SELECT seq FROM __marmot__applied WHERE stream = '${STREAM}'`).trim(), "7");
  });

  it("refuses when one message of the range was another node's (not stored for this node)", () => {
    const { db, applier } = node("1");
    for (const seq of [5, 7]) applier.noteStored(STREAM, seq, [`row-${seq}`]);
    assert.equal(applier.passOwnGap(STREAM, 5, 7), false);
    assert.equal(applier.appliedSequence(STREAM), 0);
    db.close();
  });

  it("refuses on a node that does not publish (it has no messages of its own)", () => {
    const { db, applier } = node(undefined);
    applier.noteStored(STREAM, 1, ["row-1"]);
    assert.equal(applier.passOwnGap(STREAM, 1, 1), false);
    db.close();
  });
});
