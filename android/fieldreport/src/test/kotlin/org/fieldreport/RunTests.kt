package org.fieldreport

import org.junit.runner.JUnitCore
import org.junit.runner.notification.Failure
import kotlin.system.exitProcess

/** Runs the JUnit tests and prints the plain `kotlin: N passed, N failed` line CI reads. */
fun main() {
    val result = JUnitCore.runClasses(FieldReportTest::class.java)
    for (f: Failure in result.failures) {
        System.err.println("FAILED ${f.testHeader}: ${f.message}")
        System.err.println(f.trace.lineSequence().take(12).joinToString("\n"))
    }
    val failed = result.failureCount
    println("kotlin: ${result.runCount - failed} passed, $failed failed")
    exitProcess(if (result.wasSuccessful()) 0 else 1)
}
