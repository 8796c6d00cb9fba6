package aspen;

import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.net.InetSocketAddress;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.function.Supplier;

import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.bson.BinData;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.bson.ObjectId;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.oplog.OplogPosition;
import io.netty.channel.Channel;

/**
 * The backing MongoDB-compatible server for aspen's e2e tests.
 *
 * <p>Usage: {@code java -jar aspen-backing-server.jar [--host 127.0.0.1] [--port N]
 * [--server-version 5.0.0] [--wire-version 13] [--replset NAME] [--verbose]}. {@code --port 0} (the default)
 * picks a free port. Once bound it prints exactly one line {@code LISTENING <port>} on stdout.
 * SIGTERM or SIGINT shuts the server down and exits 0.
 *
 * <p>The in-memory backend has the oplog enabled, so change streams work. mongo-java-server's
 * own {@code ServerVersion.MONGO_5_0} reports maxWireVersion 8, which the Node.js driver 7
 * (mongosh 2.12) refuses (it needs 9, MongoDB 4.4), so the version is our own: by default
 * "5.0.0" with wire version 13, the real 5.0 value. The version only changes the
 * {@code hello}/{@code buildInfo} replies.
 *
 * <p>The oplog lives in memory, so a restarted server has no history before its start. A real
 * mongod refuses to resume a change stream from a point its oplog no longer holds
 * (ChangeStreamHistoryLost, code 286); mongo-java-server's tokens are bare timestamps that it
 * compares, so it would silently resume from an unknown token. This server refuses a
 * {@code resumeAfter}/{@code startAfter} token older than its own start, as mongod would.
 *
 * <p>mongo-java-server serves change streams on collections only; {@link WideChangeStreams}
 * adds database-level and deployment-level ones from the same oplog. It has no time-series
 * collections either; {@link TimeSeriesCollections} adds their creation options, listing and
 * insert checks.
 *
 * <p>Every successful reply carries mongod's {@code operationTime} and every change-stream
 * batch a {@code postBatchResumeToken}, so drivers' change streams (PyMongo's plain
 * {@code watch()} among them) work as against mongod. With {@code --replset NAME} the server
 * presents itself as the primary of a one-member replica set ({@code setName}, {@code hosts},
 * {@code logicalSessionTimeoutMinutes}, {@code $clusterTime}) and keeps retryable writes and
 * transactions the test-grade way {@link Sessions} describes; without it, as before, a
 * standalone that ignores {@code lsid}/{@code txnNumber}.
 */
public final class BackingServer {
    private BackingServer() {
    }

    private static void usage(String error) {
        System.err.println("aspen-backing-server: " + error);
        System.err.println("usage: java -jar aspen-backing-server.jar [--host ADDR] [--port N]"
                + " [--server-version X.Y.Z] [--wire-version N] [--replset NAME] [--verbose]");
        System.exit(2);
    }

    private static MongoVersion version(String dotted, int wire) {
        List<Integer> parts = new ArrayList<>();
        for (String p : dotted.split("\\.")) {
            parts.add(Integer.parseInt(p));
        }
        List<Integer> versionArray = List.copyOf(parts);
        return new MongoVersion() {
            @Override
            public List<Integer> getVersionArray() {
                return versionArray;
            }

            @Override
            public int getWireVersion() {
                return wire;
            }
        };
    }

    /**
     * The memory backend, refusing change-stream resume tokens from before this server, with
     * mongod's {@code operationTime} on every reply and {@code postBatchResumeToken} on every
     * change-stream batch; in replica-set mode ({@code --replset NAME}) also a single-node replica
     * set's {@code isMaster}/{@code hello}, {@code $clusterTime}, retryable writes and
     * transactions ({@link Sessions}).
     */
    private static final class HistoryCheckingBackend extends MemoryBackend {
        /** Resume tokens are Timestamp values: seconds in the high 32 bits. */
        private final long oplogStart = getClock().instant().getEpochSecond() << 32;
        private final TimeSeriesCollections timeSeries = new TimeSeriesCollections();
        private final Sessions sessions = new Sessions(this::resolveDatabase);
        private final ObjectId electionId = new ObjectId("7fffffff0000000000000001");
        /** The replica set's name, or null: a standalone. */
        private String replSet;
        /** host:port, as the replica set's only member names itself. */
        private String me;
        private Supplier<BsonTimestamp> oplogNow;

        @Override
        public Document handleCommand(Channel channel, String databaseName, String command,
                Document query) {
            BsonTimestamp before = now();
            Document reply;
            if (replSet != null) {
                query.remove("$clusterTime");
                if ("endSessions".equalsIgnoreCase(command)) {
                    sessions.end(query);
                }
                Document session = sessions.handle(databaseName, command, query,
                        () -> dispatch(channel, databaseName, command, query));
                reply = session != null ? session : dispatch(channel, databaseName, command, query);
            } else {
                reply = dispatch(channel, databaseName, command, query);
            }
            addPostBatchResumeToken(command, query, reply, before);
            BsonTimestamp operationTime = now();
            reply.putIfAbsent("operationTime", operationTime);
            if (replSet != null) {
                Document signature = new Document("hash", new BinData(new byte[20]));
                signature.put("keyId", 0L);
                Document clusterTime = new Document("clusterTime", operationTime);
                clusterTime.put("signature", signature);
                reply.put("$clusterTime", clusterTime);
            }
            return reply;
        }

        private Document dispatch(Channel channel, String databaseName, String command, Document query) {
            if (replSet != null && ("ismaster".equalsIgnoreCase(command) || "hello".equals(command))) {
                Document reply = super.handleCommand(channel, databaseName, "isMaster", query);
                if ("hello".equals(command)) {
                    reply.remove("ismaster");
                    reply.put("isWritablePrimary", true);
                }
                reply.put("setName", replSet);
                reply.put("setVersion", 1);
                reply.put("hosts", List.of(me));
                reply.put("primary", me);
                reply.put("me", me);
                reply.put("secondary", false);
                reply.put("electionId", electionId);
                reply.put("logicalSessionTimeoutMinutes", 30);
                return reply;
            }
            if ("aggregate".equalsIgnoreCase(command)) {
                checkResumeToken(query);
                Document wide = new WideChangeStreams(getCursorRegistry(), this::resolveDatabase, oplog)
                        .handle(databaseName, query);
                if (wide != null) {
                    return wide;
                }
            }
            if (!"admin".equals(databaseName)) {
                Document ts = timeSeries.handle(databaseName, command, query,
                        q -> super.handleCommand(channel, databaseName, command, q));
                if (ts != null) {
                    return ts;
                }
            }
            return super.handleCommand(channel, databaseName, command, query);
        }

        /**
         * The oplog's clock now: every entry written so far is at or before it, every later one
         * after it. mongo-java-server keeps that clock private to its oplog; without it, the
         * latest entry's timestamp.
         */
        private BsonTimestamp now() {
            if (oplogNow == null) {
                try {
                    Field f = oplog.getClass().getDeclaredField("oplogClock");
                    f.setAccessible(true);
                    Object clock = f.get(oplog);
                    Method m = clock.getClass().getDeclaredMethod("now");
                    m.setAccessible(true);
                    oplogNow = () -> {
                        try {
                            return (BsonTimestamp) m.invoke(clock);
                        } catch (ReflectiveOperationException e) {
                            throw new IllegalStateException(e);
                        }
                    };
                } catch (ReflectiveOperationException | RuntimeException e) {
                    oplogNow = () -> WideChangeStreams.lastOplogTimestamp(this::resolveDatabase);
                }
            }
            return oplogNow.get();
        }

        /**
         * A change-stream batch (an aggregate with $changeStream, a getMore on its cursor) gets
         * mongod's postBatchResumeToken: the last event's token, or for an empty batch the
         * position the stream has read up to (the oplog clock before the command ran), so a
         * driver can resume from there even before it saw an event.
         */
        private void addPostBatchResumeToken(String command, Document query, Document reply,
                BsonTimestamp before) {
            boolean stream;
            if ("aggregate".equalsIgnoreCase(command)) {
                stream = WideChangeStreams.changeStreamSpec(query) != null;
            } else if ("getMore".equalsIgnoreCase(command)) {
                stream = changeStreamCursors.contains(((Number) query.get("getMore")).longValue());
            } else {
                return;
            }
            if (!stream || !(reply.get("cursor") instanceof Document)) {
                return;
            }
            Document cursor = (Document) reply.get("cursor");
            long id = cursor.get("id") instanceof Number ? ((Number) cursor.get("id")).longValue() : 0;
            if (id != 0) {
                changeStreamCursors.add(id);
            } else if ("getMore".equalsIgnoreCase(command)) {
                changeStreamCursors.remove(((Number) query.get("getMore")).longValue());
            }
            Object batch = cursor.containsKey("firstBatch") ? cursor.get("firstBatch") : cursor.get("nextBatch");
            Object token = null;
            if (batch instanceof List && !((List<?>) batch).isEmpty()) {
                Object last = ((List<?>) batch).get(((List<?>) batch).size() - 1);
                if (last instanceof Document) {
                    token = ((Document) last).get("_id");
                }
            }
            if (token == null) {
                token = new Document("_data", new OplogPosition(before).toHexString());
            }
            cursor.put("postBatchResumeToken", token);
        }

        private final Set<Long> changeStreamCursors = ConcurrentHashMap.newKeySet();

        private void checkResumeToken(Document query) {
            Document spec = WideChangeStreams.changeStreamSpec(query);
            if (spec == null) {
                return;
            }
            for (String key : new String[] {"resumeAfter", "startAfter"}) {
                Object token = spec.get(key);
                if (!(token instanceof Document) || !(((Document) token).get("_data") instanceof String)) {
                    continue;
                }
                long value;
                try {
                    value = Long.parseUnsignedLong((String) ((Document) token).get("_data"), 16);
                } catch (NumberFormatException e) {
                    continue; // not one of ours: the backend answers as it does
                }
                if (Long.compareUnsigned(value, oplogStart) < 0) {
                    throw new MongoServerError(286, "ChangeStreamHistoryLost",
                            "Resume of change stream was not possible, as the resume point may no"
                                    + " longer be in the oplog.");
                }
            }
        }
    }

    public static void main(String[] args) throws Exception {
        String host = "127.0.0.1";
        int port = 0;
        boolean verbose = false;
        String replSet = null;
        String serverVersion = "5.0.0";
        int wireVersion = 13;
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            switch (a) {
                case "--host":
                    if (++i >= args.length) usage("--host needs a value");
                    host = args[i];
                    break;
                case "--port":
                    if (++i >= args.length) usage("--port needs a value");
                    try {
                        port = Integer.parseInt(args[i]);
                    } catch (NumberFormatException e) {
                        usage("bad port: " + args[i]);
                    }
                    if (port < 0 || port > 65535) usage("bad port: " + args[i]);
                    break;
                case "--server-version":
                    if (++i >= args.length) usage("--server-version needs a value");
                    serverVersion = args[i];
                    if (!serverVersion.matches("[0-9]+(\\.[0-9]+)*")) usage("bad version: " + args[i]);
                    break;
                case "--wire-version":
                    if (++i >= args.length) usage("--wire-version needs a value");
                    try {
                        wireVersion = Integer.parseInt(args[i]);
                    } catch (NumberFormatException e) {
                        usage("bad wire version: " + args[i]);
                    }
                    break;
                case "--replset":
                    if (++i >= args.length) usage("--replset needs a name");
                    replSet = args[i];
                    break;
                case "--verbose":
                    verbose = true;
                    break;
                case "-h":
                case "--help":
                    usage("help");
                    break;
                default:
                    usage("unknown argument: " + a);
            }
        }

        // slf4j-simple reads these once, at its first use: set them before any logger exists.
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", verbose ? "info" : "warn");
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        System.setProperty("org.slf4j.simpleLogger.showDateTime", "true");

        HistoryCheckingBackend backend = new HistoryCheckingBackend();
        backend.replSet = replSet;
        backend.version(version(serverVersion, wireVersion));
        MongoServer server = new MongoServer(backend);
        server.enableOplog();
        try {
            server.bind(host, port);
        } catch (RuntimeException e) {
            System.err.println("aspen-backing-server: cannot bind " + host + ":" + port + ": " + e);
            System.exit(1);
        }

        CountDownLatch stop = new CountDownLatch(1);
        // A signal handler (not only a shutdown hook) so SIGTERM/SIGINT exit with status 0.
        sun.misc.SignalHandler onSignal = sig -> stop.countDown();
        sun.misc.Signal.handle(new sun.misc.Signal("TERM"), onSignal);
        sun.misc.Signal.handle(new sun.misc.Signal("INT"), onSignal);

        InetSocketAddress bound = server.getLocalAddress();
        backend.me = host + ":" + bound.getPort();
        System.out.println("LISTENING " + bound.getPort());
        System.out.flush();

        stop.await();
        server.shutdownNow();
        System.exit(0);
    }
}
