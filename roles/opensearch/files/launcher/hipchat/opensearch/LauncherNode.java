package hipchat.opensearch;

import java.util.Collection;

import org.opensearch.env.Environment;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

/**
 * A Node whose plugins are classes on the class path rather than bundles
 * under modules/ and plugins/. Node's public constructor does not take them;
 * the protected one does.
 */
final class LauncherNode extends Node {

    LauncherNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
        // true: forbid private index settings, as the distribution does.
        super(environment, plugins, true);
    }
}
