package org.fieldreport

import org.junit.runner.JUnitCore
import org.junit.runner.notification.Failure
import kotlin.system.exitProcess

/**
 * Runs the JUnit test classes named on the command line (scripts/bindings.sh
 * passes every `*Test` class compiled, so a new test class runs without
 * being listed anywhere) and prints the plain `kotlin: N passed, N failed`
 * line CI reads.
 */
fun main(args: Array<String>) {
    if (args.isEmpty()) {
        println("kotlin: 0 passed, 1 failed (no test class given)")
        exitProcess(1)
    }
    val classes = args.map { Class.forName(it) }.toTypedArray()
    val result = JUnitCore.runClasses(*classes)
    for (f: Failure in result.failures) {
        System.err.println("FAILED ${f.testHeader}: ${f.message}")
        System.err.println(f.trace.lineSequence().take(12).joinToString("\n"))
    }
    val failed = result.failureCount
    println("kotlin: ${result.runCount - failed} passed, $failed failed (${classes.size} classes)")
    exitProcess(if (result.wasSuccessful()) 0 else 1)
}
