// pgjdbc's own suite needs its Gradle build and Maven Central, which this workplace cannot
// reach; this program takes its place: the JDBC paths a Java application uses, each a named
// check printed as "PASS name" or "FAIL name: error", against the server in PGHOST/PGPORT.
// Run with Debian's pgjdbc (libpostgresql-jdbc-java) on the class path.

import java.io.ByteArrayInputStream;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.sql.*;
import java.util.*;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class JdbcCheck {
    interface Check { void run(Connection c) throws Exception; }

    static String url(String extra) {
        return "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT") + "/"
            + System.getenv("PGDATABASE") + "?sslmode=disable" + extra;
    }

    static Connection connect(String extra) throws SQLException {
        return DriverManager.getConnection(url(extra), System.getenv("PGUSER"), System.getenv("PGPASSWORD"));
    }

    static void expect(boolean ok, String what) { if (!ok) throw new AssertionError(what); }

    static final Map<String, Check> CHECKS = new LinkedHashMap<>();
    static {
        CHECKS.put("simple_query", c -> {
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT 1 + 1")) {
                expect(r.next() && r.getInt(1) == 2, "1 + 1");
            }
        });
        CHECKS.put("prepared_statement_server_side", c -> {  // prepareThreshold: named statements from the 5th use
            try (PreparedStatement p = c.prepareStatement("SELECT ?::int * 2")) {
                for (int i = 0; i < 10; i++) {
                    p.setInt(1, i);
                    try (ResultSet r = p.executeQuery()) { expect(r.next() && r.getInt(1) == 2 * i, "row " + i); }
                }
            }
        });
        CHECKS.put("batch_insert", c -> {
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jdbc_batch; CREATE TABLE jdbc_batch (id int PRIMARY KEY, v text)");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO jdbc_batch VALUES (?, ?)")) {
                for (int i = 0; i < 1000; i++) { p.setInt(1, i); p.setString(2, "v" + i); p.addBatch(); }
                int[] counts = p.executeBatch();
                expect(counts.length == 1000, "1000 counts");
            }
        });
        CHECKS.put("batch_failure_midway", c -> {
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jdbc_fail; CREATE TABLE jdbc_fail (id int PRIMARY KEY)");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO jdbc_fail VALUES (?)")) {
                for (int i = 0; i < 100; i++) { p.setInt(1, i == 50 ? 0 : i); p.addBatch(); }
                try { p.executeBatch(); expect(false, "no error"); }
                catch (BatchUpdateException e) { expect("23505".equals(e.getSQLState()), e.getSQLState()); }
            }
        });
        CHECKS.put("transaction_savepoint", c -> {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TEMP TABLE jdbc_tx (v int)");
                s.execute("INSERT INTO jdbc_tx VALUES (1)");
                Savepoint sp = c.setSavepoint();
                s.execute("INSERT INTO jdbc_tx VALUES (2)");
                c.rollback(sp);
                try (ResultSet r = s.executeQuery("SELECT count(*) FROM jdbc_tx")) { expect(r.next() && r.getInt(1) == 1, "1 row"); }
                c.commit();
            } finally { c.setAutoCommit(true); }
        });
        CHECKS.put("error_then_recover_in_transaction", c -> {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                try { s.execute("SELECT 1/0"); expect(false, "no error"); }
                catch (SQLException e) { expect("22012".equals(e.getSQLState()), e.getSQLState()); }
                c.rollback();
                try (ResultSet r = s.executeQuery("SELECT 3")) { expect(r.next() && r.getInt(1) == 3, "3"); }
            } finally { c.setAutoCommit(true); }
        });
        CHECKS.put("fetch_size_cursor", c -> {  // portal suspended and resumed
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.setFetchSize(100);
                int n = 0;
                try (ResultSet r = s.executeQuery("SELECT g FROM generate_series(1, 10000) g")) { while (r.next()) n++; }
                expect(n == 10000, "10000 rows, got " + n);
                c.commit();
            } finally { c.setAutoCommit(true); }
        });
        CHECKS.put("metadata_get_index_info", c -> {
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jdbc_meta; CREATE TABLE jdbc_meta (id int PRIMARY KEY, v text UNIQUE)");
            }
            DatabaseMetaData m = c.getMetaData();
            int n = 0;
            try (ResultSet r = m.getIndexInfo(null, "public", "jdbc_meta", false, false)) { while (r.next()) n++; }
            expect(n == 2, "2 index columns, got " + n);
        });
        CHECKS.put("metadata_tables_columns_keys", c -> {
            DatabaseMetaData m = c.getMetaData();
            try (ResultSet r = m.getTables(null, "public", "jdbc_meta", new String[] {"TABLE"})) { expect(r.next(), "table"); }
            int n = 0;
            try (ResultSet r = m.getColumns(null, "public", "jdbc_meta", "%")) { while (r.next()) n++; }
            expect(n == 2, "2 columns");
            try (ResultSet r = m.getPrimaryKeys(null, "public", "jdbc_meta")) { expect(r.next(), "primary key"); }
            try (ResultSet r = m.getFunctions(null, "pg_catalog", "now")) { expect(r.next(), "function now"); }
            try (ResultSet r = m.getTypeInfo()) { expect(r.next(), "type info"); }
        });
        CHECKS.put("copy_in_and_out", c -> {
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jdbc_copy; CREATE TABLE jdbc_copy (id int, v text)");
            }
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder in = new StringBuilder();
            for (int i = 0; i < 5000; i++) in.append(i).append('\t').append("row ").append(i).append('\n');
            long n = cm.copyIn("COPY jdbc_copy FROM STDIN", new ByteArrayInputStream(in.toString().getBytes(StandardCharsets.UTF_8)));
            expect(n == 5000, "copied in " + n);
            StringWriter out = new StringWriter();
            n = cm.copyOut("COPY jdbc_copy TO STDOUT", out);
            expect(n == 5000 && out.toString().equals(in.toString()), "copied out " + n);
        });
        CHECKS.put("query_timeout_cancels", c -> {
            try (Statement s = c.createStatement()) {
                s.setQueryTimeout(1);
                long t = System.nanoTime();
                try { s.execute("SELECT pg_sleep(30)"); expect(false, "no cancel"); }
                catch (SQLException e) { expect("57014".equals(e.getSQLState()), e.getSQLState()); }
                expect((System.nanoTime() - t) / 1_000_000_000L < 10, "cancelled in time");
                s.setQueryTimeout(0);
                try (ResultSet r = s.executeQuery("SELECT 4")) { expect(r.next() && r.getInt(1) == 4, "4"); }
            }
        });
        CHECKS.put("listen_notify", c -> {
            try (Statement s = c.createStatement()) { s.execute("LISTEN jdbc_chan"); }
            try (Connection other = connect(""); Statement s = other.createStatement()) { s.execute("NOTIFY jdbc_chan, 'hi'"); }
            PGNotification[] got = c.unwrap(PGConnection.class).getNotifications(5000);
            expect(got != null && got.length == 1 && "hi".equals(got[0].getParameter()), "one notification");
        });
        CHECKS.put("callable_function", c -> {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE OR REPLACE FUNCTION jdbc_add(a int, b int) RETURNS int LANGUAGE sql AS $$ SELECT a + b $$");
            }
            try (CallableStatement cs = c.prepareCall("{ ? = call jdbc_add(?, ?) }")) {
                cs.registerOutParameter(1, Types.INTEGER);
                cs.setInt(2, 2); cs.setInt(3, 3);
                cs.execute();
                expect(cs.getInt(1) == 5, "2 + 3");
            }
        });
        CHECKS.put("binary_transfer_types", c -> {
            try (PreparedStatement p = c.prepareStatement(
                    "SELECT ?::bytea, ?::numeric, ?::timestamptz, ?::uuid, ARRAY[1,2,3]::int[], '{\"a\": 1}'::jsonb")) {
                byte[] bytes = {0, 1, 2, (byte) 255};
                UUID u = UUID.randomUUID();
                Timestamp ts = new Timestamp(1700000000000L);
                for (int i = 0; i < 6; i++) {
                    p.setBytes(1, bytes); p.setBigDecimal(2, new java.math.BigDecimal("12345.6789"));
                    p.setTimestamp(3, ts); p.setObject(4, u);
                    try (ResultSet r = p.executeQuery()) {
                        expect(r.next(), "row");
                        expect(Arrays.equals(r.getBytes(1), bytes), "bytea");
                        expect(r.getBigDecimal(2).compareTo(new java.math.BigDecimal("12345.6789")) == 0, "numeric");
                        expect(r.getTimestamp(3).equals(ts), "timestamptz");
                        expect(u.equals(r.getObject(4)), "uuid");
                        expect(Arrays.equals((Integer[]) r.getArray(5).getArray(), new Integer[] {1, 2, 3}), "array");
                        expect(r.getString(6).equals("{\"a\": 1}"), "jsonb");
                    }
                }
            }
        });
        CHECKS.put("updatable_result_set", c -> {
            try (Statement s = c.createStatement(ResultSet.TYPE_SCROLL_INSENSITIVE, ResultSet.CONCUR_UPDATABLE);
                 ResultSet r = s.executeQuery("SELECT id, v FROM jdbc_batch WHERE id < 3 ORDER BY id")) {
                expect(r.next(), "row");
                r.updateString("v", "changed");
                r.updateRow();
            }
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT v FROM jdbc_batch WHERE id = 0")) {
                expect(r.next() && "changed".equals(r.getString(1)), "updated");
            }
        });
        CHECKS.put("multiple_results", c -> {
            try (Statement s = c.createStatement()) {
                expect(s.execute("SELECT 1; SELECT 2, 3; UPDATE jdbc_batch SET v = v WHERE id < 10"), "first is a result");
                int results = 1;
                while (s.getMoreResults() || s.getUpdateCount() != -1) results++;
                expect(results == 3, "3 results, got " + results);
            }
        });
        CHECKS.put("set_and_show", c -> {
            try (Statement s = c.createStatement()) {
                s.execute("SET application_name = 'jdbc check'");
                try (ResultSet r = s.executeQuery("SHOW application_name")) { expect(r.next() && "jdbc check".equals(r.getString(1)), "SHOW"); }
                s.execute("SET search_path = pg_catalog, public");
                s.execute("RESET search_path");
            }
        });
        CHECKS.put("prepare_threshold_zero_and_one", c -> {
            for (String extra : new String[] {"&prepareThreshold=0", "&prepareThreshold=1", "&preferQueryMode=simple",
                                              "&preferQueryMode=extendedForPrepared"}) {
                try (Connection o = connect(extra); PreparedStatement p = o.prepareStatement("SELECT ?::text || 'x'")) {
                    for (int i = 0; i < 3; i++) {
                        p.setString(1, "v" + i);
                        try (ResultSet r = p.executeQuery()) { expect(r.next() && r.getString(1).equals("v" + i + "x"), extra); }
                    }
                }
            }
        });
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = connect("")) {
            for (Map.Entry<String, Check> e : CHECKS.entrySet()) {
                try {
                    e.getValue().run(c);
                    System.out.println("PASS " + e.getKey());
                } catch (Throwable t) {
                    String msg = String.valueOf(t).replace('\n', ' ');
                    System.out.println("FAIL " + e.getKey() + ": " + msg);
                    if (!c.getAutoCommit()) { try { c.rollback(); c.setAutoCommit(true); } catch (SQLException ignored) { } }
                }
            }
        }
    }
}
