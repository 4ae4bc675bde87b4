package mlproducer_test

import (
	"context"
	"fmt"
	"log"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// OptionsFromLookup reads the variables of OptionsFromEnv from any source,
// here a map (as a parsed config file or a test would give them). A value it
// cannot use is an error naming the variable.
func ExampleOptionsFromLookup() {
	settings := map[string]string{
		"ML_CONFIRM_TIMEOUT":   "2000", // ms
		"ML_MAX_IN_FLIGHT":     "256",
		"ML_CONNECTION_NAME":   "billing-api",
		"ML_MEDIA_URL_SCHEMES": "https,s3",
	}
	lookup := func(name string) (string, bool) {
		v, ok := settings[name]
		return v, ok
	}

	opts, err := mlproducer.OptionsFromLookup(lookup)
	if err != nil {
		log.Fatal(err)
	}
	broker := mlproducertest.NewBroker() // stands in for RabbitMQ
	defer broker.Close()
	p, err := mlproducer.New(append(opts, mlproducer.WithDialer(broker))...)
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close(context.Background())

	settings["ML_CONFIRM_TIMEOUT"] = "2s"
	_, err = mlproducer.OptionsFromLookup(lookup)
	fmt.Println(err)
	// Output:
	// mlproducer: invalid option ML_CONFIRM_TIMEOUT="2s": want whole milliseconds from 1 to 9223372036854 (for example 2500 for 2.5 s)
}
