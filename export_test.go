package mlproducer

// CrashForTest stops p as a killed process would (see crash), for the tests
// of package mlproducer_test.
func CrashForTest(p *Producer) { p.crash() }
