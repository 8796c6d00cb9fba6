package aspen;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Supplier;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.DatabaseResolver;
import de.bwaldvogel.mongo.bson.BinData;
import de.bwaldvogel.mongo.bson.Document;

/**
 * Retryable writes and multi-document transactions for the backing server's replica-set mode
 * ({@code --replset NAME}), test-grade: enough for drivers (through aspen) to run their
 * retryable-writes and transactions machinery end to end. mongo-java-server has neither.
 *
 * <p>Retryable writes: a write command ({@code insert}, {@code update}, {@code delete},
 * {@code findAndModify}) with an {@code lsid} and a {@code txnNumber} and no {@code autocommit}
 * runs once per (session, txnNumber); the same txnNumber again gets the first execution's reply
 * without running (as mongod answers a retry from its transaction table), an older one
 * TransactionTooOld (225).
 *
 * <p>Transactions ({@code autocommit: false}): {@code startTransaction: true} opens transaction
 * N on the session (implicitly aborting an open older one); every later statement must carry the
 * same N while it is open, else NoSuchTransaction (251, label TransientTransactionError), as
 * mongod answers. Writes inside it are applied at once and undone on {@code abortTransaction}
 * (and when a statement fails, which aborts the transaction as in mongod): before each write the
 * documents it may touch are saved (first image per {@code _id} only), and an abort puts them
 * back and removes the documents the transaction inserted. {@code commitTransaction} forgets the
 * saved images; committing again (a driver's retry) answers ok.
 *
 * <p>What this is not: there is no isolation. Other sessions, and change streams, see a
 * transaction's writes as they happen, and an abort is not in the oplog; two transactions
 * writing the same document do not conflict (no WriteConflict). Commands of one session are
 * serialized; sessions never expire (endSessions forgets them).
 */
final class Sessions {
    private static final Set<String> WRITES = Set.of("insert", "update", "delete", "findandmodify");

    private enum State { ACTIVE, COMMITTED, ABORTED }

    /** One session's transaction and retryable-write record. */
    private static final class Session {
        long txnNumber = -1;
        State state = State.ABORTED;
        /** namespace -> _id -> the document before the transaction (null: it did not exist). */
        final Map<String, Map<Object, Document>> before = new LinkedHashMap<>();
        long retryNumber = -1;
        Document retryReply;
    }

    private final Map<String, Session> sessions = new ConcurrentHashMap<>();
    private final DatabaseResolver databases;

    Sessions(DatabaseResolver databases) {
        this.databases = databases;
    }

    /** A stable key for an lsid document: its id (and uid when mongod-style). */
    private static String key(Document lsid) {
        StringBuilder sb = new StringBuilder();
        for (String field : new String[] {"id", "uid"}) {
            Object v = lsid.get(field);
            if (v instanceof BinData) {
                for (byte b : ((BinData) v).getData()) {
                    sb.append(String.format("%02x", b));
                }
            } else if (v instanceof UUID) {
                sb.append(v);
            } else if (v != null) {
                sb.append(v);
            }
            sb.append('/');
        }
        return sb.toString();
    }

    private static Document error(int code, String codeName, String message, String... labels) {
        Document reply = new Document("ok", 0.0);
        reply.put("errmsg", message);
        reply.put("code", code);
        reply.put("codeName", codeName);
        if (labels.length > 0) {
            reply.put("errorLabels", List.of(labels));
        }
        return reply;
    }

    private static Document noSuchTransaction(long n, Session s) {
        String msg = s.txnNumber == n && s.state == State.ABORTED
                ? "Transaction with { txnNumber: " + n + " } has been aborted."
                : "Given transaction number " + n + " does not match any in-progress transactions."
                        + (s.state == State.ACTIVE ? " The active transaction number is " + s.txnNumber : "");
        return error(251, "NoSuchTransaction", msg, "TransientTransactionError");
    }

    /** Forgets the sessions named in an endSessions command. */
    void end(Document query) {
        if (query.get("endSessions") instanceof List) {
            for (Object lsid : (List<?>) query.get("endSessions")) {
                if (lsid instanceof Document) {
                    sessions.remove(key((Document) lsid));
                }
            }
        }
    }

    /**
     * Runs `command` under the session rules when it carries an lsid and a txnNumber; returns
     * null when the rules do not apply (the caller runs it as usual). `run` executes the
     * command on the backend.
     */
    Document handle(String db, String command, Document query, Supplier<Document> run) {
        if (!(query.get("lsid") instanceof Document) || !(query.get("txnNumber") instanceof Number)) {
            return null;
        }
        String name = command.toLowerCase();
        long n = ((Number) query.get("txnNumber")).longValue();
        Session s = sessions.computeIfAbsent(key((Document) query.get("lsid")), k -> new Session());
        synchronized (s) {
            if (Boolean.FALSE.equals(query.get("autocommit"))) {
                return transaction(s, n, db, name, query, run);
            }
            if (!WRITES.contains(name)) {
                return null;
            }
            if (n == s.retryNumber && s.retryReply != null) {
                return s.retryReply.cloneDeeply();
            }
            if (n < s.retryNumber || n < s.txnNumber) {
                return error(225, "TransactionTooOld", "Retryable write with txnNumber " + n
                        + " is prohibited on session because a newer retryable write with txnNumber "
                        + Math.max(s.retryNumber, s.txnNumber) + " has already started on this session.");
            }
            Document reply = run.get();
            s.retryNumber = n;
            s.retryReply = reply.cloneDeeply();
            return reply;
        }
    }

    private Document transaction(Session s, long n, String db, String name, Document query,
            Supplier<Document> run) {
        if (Boolean.TRUE.equals(query.get("startTransaction"))) {
            if (n < s.txnNumber || n < s.retryNumber) {
                return error(225, "TransactionTooOld", "Cannot start transaction " + n
                        + " on session because a newer transaction " + Math.max(s.txnNumber, s.retryNumber)
                        + " has already started.");
            }
            if (n == s.txnNumber) {
                return error(251, "NoSuchTransaction", "Given transaction number " + n
                        + " does not match any in-progress transactions.", "TransientTransactionError");
            }
            if (s.state == State.ACTIVE) {
                undo(s);
            }
            s.txnNumber = n;
            s.state = State.ACTIVE;
            s.before.clear();
        } else if (s.txnNumber != n || s.state != State.ACTIVE) {
            if (s.txnNumber == n && s.state == State.COMMITTED) {
                if ("committransaction".equals(name)) {
                    return new Document("ok", 1.0); // a retried commit
                }
                if ("aborttransaction".equals(name)) {
                    return error(256, "TransactionCommitted",
                            "Cannot abort a committed transaction: transaction " + n + " has been committed.");
                }
            }
            return noSuchTransaction(n, s);
        }
        if ("committransaction".equals(name)) {
            s.state = State.COMMITTED;
            s.before.clear();
            return new Document("ok", 1.0);
        }
        if ("aborttransaction".equals(name)) {
            undo(s);
            return new Document("ok", 1.0);
        }
        boolean write = WRITES.contains(name);
        if (write) {
            remember(s, db, name, query);
        }
        Document reply;
        try {
            reply = run.get();
        } catch (RuntimeException e) {
            undo(s); // a failed statement aborts the transaction, as in mongod
            throw e;
        }
        if (write) {
            if (reply.get("writeErrors") instanceof List && !((List<?>) reply.get("writeErrors")).isEmpty()) {
                undo(s);
                return reply;
            }
            rememberUpserts(s, db, query, reply);
        }
        return reply;
    }

    @SuppressWarnings("unchecked")
    private MongoCollection<Object> collection(String db, String coll) {
        MongoDatabase database = databases.resolve(db);
        return database == null ? null : (MongoCollection<Object>) database.resolveCollection(coll, false);
    }

    private static void keep(Session s, String ns, Object id, Document image) {
        s.before.computeIfAbsent(ns, k -> new LinkedHashMap<>()).putIfAbsent(id, image);
    }

    /** Saves what a write may change, before it runs. */
    private void remember(Session s, String db, String name, Document query) {
        String coll = String.valueOf(query.get(name.equals("findandmodify") ? firstKey(query) : name));
        String ns = db + "." + coll;
        List<Document> filters = new ArrayList<>();
        switch (name) {
            case "insert":
                if (query.get("documents") instanceof List) {
                    for (Object d : (List<?>) query.get("documents")) {
                        if (d instanceof Document && ((Document) d).containsKey("_id")) {
                            keepIfAbsent(s, db, coll, ns, ((Document) d).get("_id"));
                        }
                    }
                }
                return;
            case "update":
                addFilters(query.get("updates"), "q", filters);
                break;
            case "delete":
                addFilters(query.get("deletes"), "q", filters);
                break;
            default: // findAndModify
                filters.add(query.get("query") instanceof Document ? (Document) query.get("query") : new Document());
        }
        MongoCollection<Object> c = collection(db, coll);
        if (c == null) {
            return;
        }
        for (Document filter : filters) {
            c.handleQueryAsStream(filter).forEach(d -> keep(s, ns, d.get("_id"), d.cloneDeeply()));
        }
    }

    private static String firstKey(Document query) {
        return query.keySet().iterator().next();
    }

    private void keepIfAbsent(Session s, String db, String coll, String ns, Object id) {
        MongoCollection<Object> c = collection(db, coll);
        Document existing = c == null ? null
                : c.handleQueryAsStream(new Document("_id", id)).findFirst().orElse(null);
        keep(s, ns, id, existing == null ? null : existing.cloneDeeply());
    }

    private static void addFilters(Object statements, String field, List<Document> out) {
        if (statements instanceof List) {
            for (Object st : (List<?>) statements) {
                if (st instanceof Document && ((Document) st).get(field) instanceof Document) {
                    out.add((Document) ((Document) st).get(field));
                }
            }
        }
    }

    /** Upserted documents did not exist before: an abort removes them. */
    private static void rememberUpserts(Session s, String db, Document query, Document reply) {
        String name = firstKey(query);
        String ns = db + "." + query.get(name);
        if (reply.get("upserted") instanceof List) {
            for (Object u : (List<?>) reply.get("upserted")) {
                if (u instanceof Document) {
                    keep(s, ns, ((Document) u).get("_id"), null);
                }
            }
        }
        if (reply.get("lastErrorObject") instanceof Document) {
            Object id = ((Document) reply.get("lastErrorObject")).get("upserted");
            if (id != null) {
                keep(s, ns, id, null);
            }
        }
    }

    /** Puts back every document the open transaction changed; the transaction is aborted. */
    private void undo(Session s) {
        List<Map.Entry<String, Map<Object, Document>>> namespaces = new ArrayList<>(s.before.entrySet());
        for (Map.Entry<String, Map<Object, Document>> e : namespaces) {
            String ns = e.getKey();
            int dot = ns.indexOf('.');
            MongoCollection<Object> c = collection(ns.substring(0, dot), ns.substring(dot + 1));
            if (c == null) {
                continue;
            }
            for (Map.Entry<Object, Document> doc : new HashMap<>(e.getValue()).entrySet()) {
                c.deleteDocuments(new Document("_id", doc.getKey()), 1);
                if (doc.getValue() != null) {
                    c.insertDocuments(List.of(doc.getValue().cloneDeeply()));
                }
            }
        }
        s.before.clear();
        s.state = State.ABORTED;
    }
}
