/*
 * Starts one OpenSearch node in this JVM from the jars that the opensearch
 * role fetched from Maven, for hosts that have no official OpenSearch
 * distribution. The distribution's bin/opensearch loads its modules from
 * modules/; here the module plugins are ordinary jars on the class path and
 * their plugin classes are named on the command line.
 *
 * Usage:
 *   java @<conf>/jvm.options
 *        -Dopensearch.path.home=<home> -Dopensearch.path.conf=<conf>
 *        -cp '<home>/lib/*' hipchat.opensearch.NodeLauncher PluginClass...
 *
 * <conf> holds opensearch.yml and log4j2.properties. The node stops cleanly
 * on SIGTERM (supervisord's stop signal). Any failure before the node is
 * started is printed to stderr (once logging is configured OpenSearch routes
 * stderr into its log) and ends the JVM with exit status 1; a bad command
 * line ends it with status 64. Unlike bin/opensearch this runs no bootstrap
 * checks, no security manager and no keystore.
 */
package hipchat.opensearch;

import java.net.InetAddress;
import java.net.UnknownHostException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.logging.log4j.LogManager;
import org.apache.logging.log4j.Logger;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

public final class NodeLauncher {

    /** Exit status after a failed start or a fatal error. */
    static final int EXIT_FAILURE = 1;
    static final int EXIT_USAGE = 64;
    static final long CLOSE_TIMEOUT_SECONDS = 50;

    private final CountDownLatch stopped = new CountDownLatch(1);
    private volatile Node node;

    private NodeLauncher() {}

    public static void main(String[] args) {
        Path home = requiredDirectory("opensearch.path.home");
        Path conf = requiredDirectory("opensearch.path.conf");
        if (home == null || conf == null || args.length == 0) {
            System.err.println(
                "usage: java -Dopensearch.path.home=DIR -Dopensearch.path.conf=DIR"
                    + " -cp 'DIR/lib/*' hipchat.opensearch.NodeLauncher PluginClass...");
            System.exit(EXIT_USAGE);
            return;
        }
        new NodeLauncher().run(home, conf, args);
    }

    private void run(Path home, Path conf, String[] pluginClassNames) {
        try {
            Collection<Class<? extends Plugin>> plugins = loadPluginClasses(pluginClassNames);
            Thread.setDefaultUncaughtExceptionHandler(NodeLauncher::uncaught);
            LogConfigurator.registerErrorListener();
            Environment environment = prepareEnvironment(home, conf);
            LogConfigurator.setNodeName(Node.NODE_NAME_SETTING.get(environment.settings()));
            LogConfigurator.configure(environment);
            Logger logger = LogManager.getLogger(NodeLauncher.class);
            logger.info("starting node with module plugins {}", Collections.unmodifiableCollection(plugins));
            node = new LauncherNode(environment, plugins);
            Runtime.getRuntime().addShutdownHook(new Thread(this::stop, "hipchat-opensearch-shutdown"));
            node.start();
            logger.info("node started");
        } catch (Throwable failure) {
            System.err.println("OpenSearch node failed to start: " + failure);
            failure.printStackTrace(System.err);
            closeQuietly();
            System.err.flush();
            // halt, not exit: the shutdown hook would wait for a node that never ran.
            Runtime.getRuntime().halt(EXIT_FAILURE);
        }
        awaitStop();
    }

    /**
     * As the distribution does: an Error escaping any thread leaves the node
     * in an unknown state, so the JVM ends and supervisord starts it again.
     */
    private static void uncaught(Thread thread, Throwable failure) {
        if (failure instanceof Error) {
            try {
                System.err.println("fatal error in thread [" + thread.getName() + "], exiting: " + failure);
                failure.printStackTrace(System.err);
                System.err.flush();
            } finally {
                Runtime.getRuntime().halt(EXIT_FAILURE);
            }
        }
        LogManager.getLogger(NodeLauncher.class)
            .error(() -> "uncaught exception in thread [" + thread.getName() + "]", failure);
    }

    private static Path requiredDirectory(String property) {
        String value = System.getProperty(property);
        if (value == null || value.isEmpty()) {
            System.err.println("system property " + property + " is not set");
            return null;
        }
        Path path = Paths.get(value).toAbsolutePath().normalize();
        if (!Files.isDirectory(path)) {
            System.err.println(property + ": " + path + " is not a directory");
            return null;
        }
        return path;
    }

    private static Collection<Class<? extends Plugin>> loadPluginClasses(String[] names)
            throws ClassNotFoundException {
        List<Class<? extends Plugin>> plugins = new ArrayList<>();
        for (String name : names) {
            plugins.add(Class.forName(name).asSubclass(Plugin.class));
        }
        return plugins;
    }

    private static Environment prepareEnvironment(Path home, Path conf) {
        Settings input = Settings.builder()
            .put(Environment.PATH_HOME_SETTING.getKey(), home.toString())
            .build();
        // opensearch.yml in conf is read here, as the distribution does it.
        return InternalSettingsPreparer.prepareEnvironment(
            input, Collections.emptyMap(), conf, NodeLauncher::hostName);
    }

    private static String hostName() {
        try {
            return InetAddress.getLocalHost().getHostName();
        } catch (UnknownHostException e) {
            return "opensearch";
        }
    }

    /** Runs in the shutdown hook: SIGTERM, SIGINT or System.exit. */
    private void stop() {
        try {
            Node running = node;
            if (running != null) {
                LogManager.getLogger(NodeLauncher.class).info("stopping node");
                running.close();
                if (!running.awaitClose(CLOSE_TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
                    System.err.println("node did not close within " + CLOSE_TIMEOUT_SECONDS + "s");
                }
            }
        } catch (Exception e) {
            System.err.println("error while stopping the node: " + e);
            e.printStackTrace(System.err);
        } finally {
            stopped.countDown();
            LogManager.shutdown();
        }
    }

    private void closeQuietly() {
        Node started = node;
        if (started == null) {
            return;
        }
        try {
            started.close();
        } catch (Exception e) {
            System.err.println("error while closing the failed node: " + e);
        }
    }

    /** Keeps the JVM alive until the shutdown hook has closed the node. */
    private void awaitStop() {
        while (true) {
            try {
                stopped.await();
                return;
            } catch (InterruptedException e) {
                // Only the shutdown hook ends the wait.
            }
        }
    }
}
