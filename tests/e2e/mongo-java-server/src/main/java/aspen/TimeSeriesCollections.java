package aspen;

import java.time.Instant;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Function;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * Time-series collections on top of mongo-java-server 1.47, which has none: enough of mongod's
 * behaviour for aspen's {@code $emit} to a time-series collection to be tested against it.
 *
 * <ul>
 *   <li>{@code create} with a {@code timeseries} option validates it as mongod does (timeField
 *       required, a top-level field name; metaField neither {@code _id} nor the timeField;
 *       granularity {@code seconds|minutes|hours}; bucketMaxSpanSeconds and bucketRoundingSeconds
 *       set together, equal, and only with a granularity when they equal its defaults), creates
 *       an ordinary collection underneath and remembers the options (with mongod's defaults
 *       filled in). Creating it again with the same options succeeds, as on mongod 5.0+;
 *       different options, or a plain collection of that name, give NamespaceExists (48).
 *   <li>{@code listCollections} reports such a collection with {@code type: "timeseries"} and
 *       {@code options: {timeseries: {...}}}.
 *   <li>{@code insert} into it refuses each document whose timeField is missing or not a BSON
 *       date with mongod's write error (code 2 BadValue, {@code '<timeField>' must be present and
 *       contain a valid BSON UTC datetime value}); ordered inserts stop there, unordered ones
 *       write the others.
 *   <li>{@code drop} and {@code dropDatabase} forget the options.
 * </ul>
 *
 * Buckets, {@code system.buckets.*} and the query-side rewrites are not emulated: documents are
 * stored as they are inserted.
 */
final class TimeSeriesCollections {
    private static final int BAD_VALUE = 2;
    private static final int TYPE_MISMATCH = 14;
    private static final int NAMESPACE_EXISTS = 48;
    private static final int INVALID_OPTIONS = 72;
    private static final int UNKNOWN_FIELD = 40415;
    private static final int MISSING_FIELD = 40414;
    private static final long MAX_BUCKET_SECONDS = 31536000L;

    /** "db.coll" -> its timeseries options, as listCollections shows them. */
    private final Map<String, Document> options = new ConcurrentHashMap<>();

    /**
     * Answers {@code command} when it concerns time-series collections, else returns null. {@code
     * backend} runs a command (possibly rewritten) on the underlying backend.
     */
    Document handle(String db, String command, Document query, Function<Document, Document> backend) {
        if ("create".equalsIgnoreCase(command) && query.containsKey("timeseries")) {
            return create(db, command, query, backend);
        }
        if ("listCollections".equalsIgnoreCase(command)) {
            return listCollections(db, backend.apply(query));
        }
        if ("insert".equalsIgnoreCase(command)) {
            Document ts = options.get(db + "." + query.get(command));
            return ts == null ? null : insert(ts, command, query, backend);
        }
        if ("drop".equalsIgnoreCase(command)) {
            Document reply = backend.apply(query);
            options.remove(db + "." + query.get(command));
            return reply;
        }
        if ("dropDatabase".equalsIgnoreCase(command)) {
            Document reply = backend.apply(query);
            options.keySet().removeIf(ns -> ns.startsWith(db + "."));
            return reply;
        }
        return null;
    }

    private static MongoServerError invalid(String message) {
        return new MongoServerError(INVALID_OPTIONS, "InvalidOptions", message);
    }

    private static String stringField(Document ts, String name, boolean required) {
        Object v = ts.get(name);
        if (v == null && !ts.containsKey(name)) {
            if (required) {
                throw new MongoServerError(MISSING_FIELD, "Location40414",
                        "BSON field 'create.timeseries." + name + "' is missing but a required field");
            }
            return null;
        }
        if (!(v instanceof String)) {
            throw new MongoServerError(TYPE_MISMATCH, "TypeMismatch", "BSON field 'create.timeseries."
                    + name + "' is the wrong type, expected type 'string'");
        }
        return (String) v;
    }

    private static Long secondsField(Document ts, String name) {
        Object v = ts.get(name);
        if (v == null) {
            return null;
        }
        long n;
        if (v instanceof Integer || v instanceof Long) {
            n = ((Number) v).longValue();
        } else if (v instanceof Double && ((Double) v) == Math.rint((Double) v)) {
            n = ((Double) v).longValue();
        } else {
            throw new MongoServerError(TYPE_MISMATCH, "TypeMismatch", "BSON field 'create.timeseries."
                    + name + "' is the wrong type, expected a number");
        }
        if (n < 1 || n > MAX_BUCKET_SECONDS) {
            throw new MongoServerError(BAD_VALUE, "BadValue", "BSON field 'create.timeseries." + name
                    + "' value must be in the range [1, " + MAX_BUCKET_SECONDS + "]");
        }
        return n;
    }

    /** The bucketing defaults of a granularity: {maxSpan, rounding} in seconds. */
    private static long[] granularityDefaults(String granularity) {
        switch (granularity) {
            case "seconds":
                return new long[] {3600, 60};
            case "minutes":
                return new long[] {86400, 3600};
            case "hours":
                return new long[] {2592000, 86400};
            default:
                throw new MongoServerError(BAD_VALUE, "BadValue", "Enumeration value '" + granularity
                        + "' for field 'create.timeseries.granularity' is not a valid value.");
        }
    }

    /** Validates a create command's timeseries option as mongod does; returns the stored form. */
    private static Document validate(String ns, Object option) {
        if (!(option instanceof Document)) {
            throw new MongoServerError(TYPE_MISMATCH, "TypeMismatch",
                    "BSON field 'create.timeseries' is the wrong type, expected type 'object'");
        }
        Document ts = (Document) option;
        for (String k : ts.keySet()) {
            switch (k) {
                case "timeField":
                case "metaField":
                case "granularity":
                case "bucketMaxSpanSeconds":
                case "bucketRoundingSeconds":
                    break;
                default:
                    throw new MongoServerError(UNKNOWN_FIELD, "Location40415",
                            "BSON field 'create.timeseries." + k + "' is an unknown field.");
            }
        }
        String timeField = stringField(ts, "timeField", true);
        String metaField = stringField(ts, "metaField", false);
        String granularity = stringField(ts, "granularity", false);
        Long maxSpan = secondsField(ts, "bucketMaxSpanSeconds");
        Long rounding = secondsField(ts, "bucketRoundingSeconds");
        if (timeField.contains(".")) {
            throw invalid(ns + ": 'timeField' must be a top-level field and not contain a '.'");
        }
        if (metaField != null) {
            if (metaField.equals("_id")) {
                throw invalid("'metaField' cannot be \"_id\"");
            }
            if (metaField.equals(timeField)) {
                throw invalid("'metaField' cannot be the same as 'timeField'");
            }
            if (metaField.contains(".")) {
                throw invalid(ns + ": 'metaField' must be a top-level field and not contain a '.'");
            }
        }
        Document stored = new Document("timeField", timeField);
        if (metaField != null) {
            stored.put("metaField", metaField);
        }
        if (granularity != null) {
            long[] defaults = granularityDefaults(granularity);
            if (maxSpan != null && maxSpan != defaults[0]) {
                throw invalid("Timeseries 'bucketMaxSpanSeconds' is not configurable to a value other"
                        + " than the default of " + defaults[0] + " for the provided granularity");
            }
            if (rounding != null && rounding != defaults[1]) {
                throw invalid("Timeseries 'bucketRoundingSeconds' is not configurable to a value other"
                        + " than the default of " + defaults[1] + " for the provided granularity");
            }
            stored.put("granularity", granularity);
            stored.put("bucketMaxSpanSeconds", (int) defaults[0]);
        } else if (maxSpan == null && rounding == null) {
            stored.put("granularity", "seconds");
            stored.put("bucketMaxSpanSeconds", 3600);
        } else {
            if (maxSpan == null || rounding == null) {
                throw invalid("Timeseries 'bucketMaxSpanSeconds' and 'bucketRoundingSeconds' need to be"
                        + " set alongside each other");
            }
            if (!maxSpan.equals(rounding)) {
                throw invalid("Timeseries 'bucketRoundingSeconds' needs to be equal to"
                        + " 'bucketMaxSpanSeconds'");
            }
            stored.put("bucketRoundingSeconds", maxSpan.intValue());
            stored.put("bucketMaxSpanSeconds", maxSpan.intValue());
        }
        return stored;
    }

    private Document create(String db, String command, Document query, Function<Document, Document> backend) {
        String coll = String.valueOf(query.get(command));
        String ns = db + "." + coll;
        Document stored = validate(ns, query.get("timeseries"));
        Document existing = options.get(ns);
        if (existing != null) {
            if (existing.equals(stored)) {
                return new Document("ok", 1.0);
            }
            throw new MongoServerError(NAMESPACE_EXISTS, "NamespaceExists",
                    "namespace " + ns + " already exists, but with different options: "
                            + new Document("timeseries", existing).toString());
        }
        Document plain = new Document(query);
        plain.remove("timeseries");
        plain.remove("expireAfterSeconds");
        Document reply = backend.apply(plain); // NamespaceExists if a plain collection is there
        options.put(ns, stored);
        return reply;
    }

    @SuppressWarnings("unchecked")
    private Document listCollections(String db, Document reply) {
        Object cursor = reply.get("cursor");
        if (!(cursor instanceof Document) || !(((Document) cursor).get("firstBatch") instanceof List)) {
            return reply;
        }
        for (Object o : (List<Object>) ((Document) cursor).get("firstBatch")) {
            if (!(o instanceof Document)) {
                continue;
            }
            Document info = (Document) o;
            Document ts = options.get(db + "." + info.get("name"));
            if (ts != null) {
                info.put("type", "timeseries");
                info.put("options", new Document("timeseries", new Document(ts)));
                info.remove("idIndex");
            }
        }
        return reply;
    }

    @SuppressWarnings("unchecked")
    private Document insert(Document ts, String command, Document query, Function<Document, Document> backend) {
        String timeField = (String) ts.get("timeField");
        List<Document> docs = (List<Document>) query.get("documents");
        boolean ordered = !Boolean.FALSE.equals(query.get("ordered"));
        List<Document> good = new ArrayList<>();
        List<Integer> goodIndex = new ArrayList<>();
        List<Document> errors = new ArrayList<>();
        for (int i = 0; docs != null && i < docs.size(); i++) {
            if (docs.get(i).get(timeField) instanceof Instant) {
                good.add(docs.get(i));
                goodIndex.add(i);
                continue;
            }
            errors.add(new Document("index", i).append("code", BAD_VALUE)
                    .append("errmsg", "'" + timeField + "' must be present and contain a valid BSON UTC"
                            + " datetime value"));
            if (ordered) {
                break;
            }
        }
        int n = 0;
        if (!good.isEmpty()) {
            Document sub = new Document(query);
            sub.put("documents", good);
            Document reply = backend.apply(sub);
            n = good.size();
            Object subErrors = reply.get("writeErrors");
            if (subErrors instanceof List) {
                for (Object o : (List<Object>) subErrors) {
                    Document e = new Document((Document) o);
                    e.put("index", goodIndex.get(((Number) e.get("index")).intValue()));
                    errors.add(e);
                    n--;
                }
            }
        }
        errors.sort(Comparator.comparingInt(e -> ((Number) e.get("index")).intValue()));
        Document result = new Document("n", n);
        if (!errors.isEmpty()) {
            result.put("writeErrors", errors);
        }
        result.put("ok", 1.0);
        return result;
    }
}
