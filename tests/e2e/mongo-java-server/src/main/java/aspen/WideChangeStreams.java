package aspen;

import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.function.Function;
import java.util.stream.Stream;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.DatabaseResolver;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.oplog.Oplog;
import de.bwaldvogel.mongo.oplog.OplogCursor;
import de.bwaldvogel.mongo.oplog.OplogPosition;

/**
 * Database-level ({@code db.watch()}) and deployment-level ({@code $changeStream:
 * {allChangesForCluster: true}} on {@code admin}) change streams, which mongo-java-server
 * 1.47 only serves per collection. Both read its oplog (the {@code local.oplog.rs}
 * collection its collection-level streams read) and page through it with its own
 * {@link OplogCursor}, so {@code getMore}, {@code killCursors}, resume tokens
 * ({@code _id._data}: the oplog timestamp in hex) and {@code resumeAfter} /
 * {@code startAfter} / {@code startAtOperationTime} behave as for its collection streams.
 *
 * <p>Events have mongod's shape: {@code _id}, {@code operationType}, {@code clusterTime},
 * {@code ns: {db, coll}}, {@code documentKey} and, for inserts and replacements (and updates
 * under {@code fullDocument: "updateLookup"}), {@code fullDocument}; updates carry
 * {@code updateDescription} from the update's {@code $set}/{@code $unset} (the oplog holds
 * the update itself, not its effect, so other operators' fields are not listed). Dropping a
 * collection gives a {@code drop} event; as in mongod it does not invalidate a database or
 * deployment stream. The internal databases ({@code admin}, {@code config}, {@code local})
 * and {@code system.*} collections are not watched.
 */
final class WideChangeStreams {
    private static final Set<String> INTERNAL_DATABASES = Set.of("admin", "config", "local");

    private final CursorRegistry cursors;
    private final DatabaseResolver databases;
    private final Oplog oplog;

    WideChangeStreams(CursorRegistry cursors, DatabaseResolver databases, Oplog oplog) {
        this.cursors = cursors;
        this.databases = databases;
        this.oplog = oplog;
    }

    /** The $changeStream spec of an aggregate's first stage, or null. */
    static Document changeStreamSpec(Document query) {
        if (!(query.get("pipeline") instanceof List)) {
            return null;
        }
        List<?> pipeline = (List<?>) query.get("pipeline");
        if (pipeline.isEmpty() || !(pipeline.get(0) instanceof Document)) {
            return null;
        }
        Object spec = ((Document) pipeline.get(0)).get("$changeStream");
        return spec instanceof Document ? (Document) spec : null;
    }

    /**
     * Answers an {@code aggregate} whose first stage is $changeStream when it is not on a
     * collection ({@code aggregate: 1}); returns null when the backend's own collection-level
     * streams should answer it.
     */
    Document handle(String databaseName, Document query) {
        Document spec = changeStreamSpec(query);
        if (spec == null) {
            return null;
        }
        boolean wholeDatabase = query.get("aggregate") instanceof Number;
        boolean cluster = Boolean.TRUE.equals(spec.get("allChangesForCluster"));
        if (!wholeDatabase) {
            if (cluster) {
                throw allChangesForClusterPlacement();
            }
            return null;
        }
        if (cluster != "admin".equals(databaseName)) {
            if (cluster) {
                throw allChangesForClusterPlacement();
            }
            throw new MongoServerError(73, "InvalidNamespace",
                    "$changeStream may not be opened on the internal " + databaseName + " database");
        }
        if (!cluster && INTERNAL_DATABASES.contains(databaseName)) {
            throw new MongoServerError(73, "InvalidNamespace",
                    "$changeStream may not be opened on the internal " + databaseName + " database");
        }
        if (!(query.get("cursor") instanceof Document)) {
            throw new MongoServerError(9, "FailedToParse",
                    "The 'cursor' option is required, except for aggregate with the explain argument");
        }
        @SuppressWarnings("unchecked")
        List<Document> pipeline = (List<Document>) query.get("pipeline");
        MongoDatabase database = databases.resolve(databaseName);
        Aggregation rest = Aggregation.fromPipeline(pipeline.subList(1, pipeline.size()), databases,
                database, null, oplog);
        rest.validate(query);

        String watched = cluster ? null : databaseName;
        Function<OplogPosition, Stream<Document>> events =
                position -> rest.runStagesAsStream(events(spec, watched, position));
        OplogCursor cursor = new OplogCursor(cursors.generateCursorId(), events, startPosition(spec));
        cursors.add(cursor);

        Object batchSize = ((Document) query.get("cursor")).get("batchSize");
        List<Document> firstBatch = cursor.takeDocuments(batchSize instanceof Number
                ? ((Number) batchSize).intValue() : 0);
        Document cursorDocument = new Document("id", cursor.getId());
        cursorDocument.put("ns", databaseName + ".$cmd.aggregate");
        cursorDocument.put("firstBatch", firstBatch);
        Document response = new Document("cursor", cursorDocument);
        response.put("ok", 1.0);
        return response;
    }

    private static MongoServerError allChangesForClusterPlacement() {
        return new MongoServerError(72, "InvalidOptions",
                "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin'"
                        + " database, and with no collection name");
    }

    @SuppressWarnings("unchecked")
    private Stream<Document> oplogEntries() {
        MongoCollection<Document> collection = (MongoCollection<Document>) databases.resolve("local")
                .resolveCollection("oplog.rs", false);
        return collection == null ? Stream.empty() : collection.queryAllAsStream();
    }

    /** The timestamp of the oplog's latest entry (0 when it is empty). */
    @SuppressWarnings("unchecked")
    static BsonTimestamp lastOplogTimestamp(DatabaseResolver databases) {
        MongoCollection<Document> collection = (MongoCollection<Document>) databases.resolve("local")
                .resolveCollection("oplog.rs", false);
        return (collection == null ? Stream.<Document>empty() : collection.queryAllAsStream())
                .map(WideChangeStreams::timestamp).max(BsonTimestamp::compareTo)
                .orElse(new BsonTimestamp(0));
    }

    private static BsonTimestamp timestamp(Document entry) {
        return (BsonTimestamp) entry.get("ts");
    }

    private OplogPosition startPosition(Document spec) {
        for (String key : new String[] {"startAfter", "resumeAfter"}) {
            Object token = spec.get(key);
            if (token == null) {
                continue;
            }
            if (!(token instanceof Document) || !(((Document) token).get("_data") instanceof String)) {
                throw new MongoServerError(9, "FailedToParse", key + " must be a resume token");
            }
            try {
                return OplogPosition.fromDocument((Document) token);
            } catch (NumberFormatException e) {
                throw new MongoServerError(9, "FailedToParse", "invalid resume token in " + key);
            }
        }
        Object at = spec.get("startAtOperationTime");
        if (at instanceof BsonTimestamp) {
            return new OplogPosition((BsonTimestamp) at).inclusive();
        }
        // "Now": after the last entry written so far.
        BsonTimestamp last = oplogEntries().map(WideChangeStreams::timestamp)
                .max(BsonTimestamp::compareTo).orElse(new BsonTimestamp(0));
        return new OplogPosition(last);
    }

    /** The change events after position, in oplog order, for one database or (null) all. */
    private Stream<Document> events(Document spec, String database, OplogPosition position) {
        boolean lookup = "updateLookup".equals(spec.get("fullDocument"));
        return oplogEntries()
                .filter(entry -> new OplogPosition(timestamp(entry)).isAfter(position))
                .sorted((a, b) -> timestamp(a).compareTo(timestamp(b)))
                .map(entry -> toEvent(entry, database, lookup))
                .filter(event -> event != null);
    }

    /** The event for one oplog entry, or null when it is not watched. */
    private Document toEvent(Document entry, String watchedDatabase, boolean lookup) {
        String namespace = (String) entry.get("ns");
        int dot = namespace.indexOf('.');
        if (dot < 0) {
            return null;
        }
        String db = namespace.substring(0, dot);
        String coll = namespace.substring(dot + 1);
        if (watchedDatabase != null ? !watchedDatabase.equals(db) : INTERNAL_DATABASES.contains(db)) {
            return null;
        }
        Document o = (Document) entry.get("o");
        String op = (String) entry.get("op");
        BsonTimestamp ts = timestamp(entry);
        Document event = new Document("_id", new Document("_data", new OplogPosition(ts).toHexString()));
        switch (op) {
            case "i":
                event.put("operationType", "insert");
                event.put("clusterTime", ts);
                event.put("fullDocument", o.cloneDeeply());
                putNamespace(event, db, coll);
                event.put("documentKey", new Document("_id", o.get("_id")));
                break;
            case "u": {
                Object id = ((Document) entry.get("o2")).get("_id");
                boolean replacement = o.keySet().stream().noneMatch(k -> k.startsWith("$"));
                event.put("operationType", replacement ? "replace" : "update");
                event.put("clusterTime", ts);
                if (replacement) {
                    Document full = new Document("_id", id);
                    o.forEach((k, v) -> {
                        if (!"_id".equals(k)) {
                            full.put(k, v instanceof Document ? ((Document) v).cloneDeeply() : v);
                        }
                    });
                    event.put("fullDocument", full);
                } else if (lookup) {
                    event.put("fullDocument", currentDocument(db, coll, id));
                }
                putNamespace(event, db, coll);
                event.put("documentKey", new Document("_id", id));
                if (!replacement) {
                    event.put("updateDescription", updateDescription(o));
                }
                break;
            }
            case "d":
                event.put("operationType", "delete");
                event.put("clusterTime", ts);
                putNamespace(event, db, coll);
                event.put("documentKey", new Document("_id", o.get("_id")));
                break;
            case "c":
                if (!"$cmd".equals(coll) || !(o.get("drop") instanceof String)) {
                    return null;
                }
                coll = (String) o.get("drop");
                event.put("operationType", "drop");
                event.put("clusterTime", ts);
                putNamespace(event, db, coll);
                break;
            default:
                return null;
        }
        return coll.startsWith("system.") ? null : event;
    }

    private static void putNamespace(Document event, String db, String coll) {
        Document ns = new Document("db", db);
        ns.put("coll", coll);
        event.put("ns", ns);
    }

    private Object currentDocument(String db, String coll, Object id) {
        MongoCollection<?> collection = databases.resolve(db).resolveCollection(coll, false);
        if (collection == null) {
            return null;
        }
        return collection.queryAllAsStream().filter(d -> id.equals(d.get("_id"))).findFirst().orElse(null);
    }

    private static Document updateDescription(Document update) {
        Document updated = new Document();
        if (update.get("$set") instanceof Document) {
            updated.putAll(((Document) update.get("$set")).cloneDeeply());
        }
        List<String> removed = new ArrayList<>();
        if (update.get("$unset") instanceof Document) {
            removed.addAll(((Document) update.get("$unset")).keySet());
        }
        Document description = new Document("updatedFields", updated);
        description.put("removedFields", removed);
        description.put("truncatedArrays", new ArrayList<>());
        return description;
    }
}
