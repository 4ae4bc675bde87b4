package mlproducer

// TaskType names the kind of ML work a message asks for. It picks the
// routing key (and so the queue) of the message and is written in the body's
// "type" field.
type TaskType string

// The task types the Producer publishes.
const (
	// TaskSummarization asks for a summary of a text ("content").
	TaskSummarization TaskType = "summarization"
	// TaskTranscription asks for the transcript of an audio or video file
	// ("mediaUrl").
	TaskTranscription TaskType = "transcription"
	// TaskEmbedding asks for a vector embedding of a text ("content").
	TaskEmbedding TaskType = "embedding"
)

// TaskVersion is the version of the JSON body written in its "version"
// field. Any change to the body's shape (a field added, removed or changed)
// comes with a new version; [DecodeTask] accepts this version only.
const TaskVersion = 1

// Routing keys, one per task type.
const (
	routingKeySummarization = "ml.summarization"
	routingKeyTranscription = "ml.transcription"
	routingKeyEmbedding     = "ml.embedding"
)

// RoutingKey returns the routing key of messages of type t on the ml.tasks
// exchange: "ml.summarization", "ml.transcription" or "ml.embedding". It
// returns "" for an unknown type. It does not allocate.
func (t TaskType) RoutingKey() string {
	switch t {
	case TaskSummarization:
		return routingKeySummarization
	case TaskTranscription:
		return routingKeyTranscription
	case TaskEmbedding:
		return routingKeyEmbedding
	}
	return ""
}

// valid reports whether t is one of the known task types.
func (t TaskType) valid() bool {
	return t.RoutingKey() != ""
}

// Limits on option values. The zero value of every option means "the
// model's default" and is always accepted.
const (
	maxSummaryLength   = 10000 // SummarizationOptions.MaxLength, words
	maxLanguageTag     = 35    // Language, bytes (ASCII)
	maxSpeakers        = 32    // TranscriptionOptions.MaxSpeakers
	maxModelName       = 128   // EmbeddingOptions.Model, bytes (ASCII)
	maxEmbeddingDims   = 8192  // EmbeddingOptions.Dimensions
	maxMessageID       = 128   // Message.ID and the body's messageId, bytes
	maxMediaURL        = 4096  // mediaUrl, bytes
	defaultMaxShareID  = 256
	defaultMaxContent  = 1 << 20
	defaultBodyOverrun = 64 << 10
)

// DefaultMaxBodyBytes is the body limit of a Producer with the default
// [WithMaxContentBytes] (1 MiB of content plus 64 KiB for the rest of the
// body), and so the largest body [DecodeTask] accepts by default. A Producer
// refuses to publish a bigger body: a typed task whose content grows past it
// once escaped as JSON, or a [Message] whose Body is longer.
const DefaultMaxBodyBytes = defaultMaxContent + defaultBodyOverrun

// Summarization styles accepted in [SummarizationOptions.Style].
const (
	styleParagraph = "paragraph"
	styleBullets   = "bullets"
	styleHeadline  = "headline"
)

// SummarizationOptions tune a summarization task. The zero value asks for
// the model's defaults and is always valid.
type SummarizationOptions struct {
	// MaxLength is the longest summary wanted, in words: 0 (model default)
	// or 1 to 10000.
	MaxLength int `json:"maxLength,omitempty"`
	// Language is the language of the summary as a BCP 47 tag such as "en"
	// or "pt-BR", at most 35 characters; "" lets the model choose (usually
	// the language of the content). Only the tag's syntax is checked.
	Language string `json:"language,omitempty"`
	// Style is the shape of the summary: "" (model default), "paragraph",
	// "bullets" or "headline".
	Style string `json:"style,omitempty"`
}

// TranscriptionOptions tune a transcription task. The zero value asks for
// the model's defaults and is always valid.
type TranscriptionOptions struct {
	// Language is the spoken language as a BCP 47 tag such as "en" or
	// "pt-BR", at most 35 characters; "" asks the model to detect it.
	Language string `json:"language,omitempty"`
	// Diarization asks the model to tell speakers apart.
	Diarization bool `json:"diarization,omitempty"`
	// MaxSpeakers is the most speakers to tell apart: 0 (model default) or 1
	// to 32. A non-zero value requires Diarization.
	MaxSpeakers int `json:"maxSpeakers,omitempty"`
}

// EmbeddingOptions tune an embedding task. The zero value asks for the
// model's defaults and is always valid.
type EmbeddingOptions struct {
	// Model names the embedding model: "" (the consumer's default) or at
	// most 128 visible ASCII characters (0x21 to 0x7E, so no spaces).
	Model string `json:"model,omitempty"`
	// Dimensions is the length of the vector wanted: 0 (model default) or 1
	// to 8192.
	Dimensions int `json:"dimensions,omitempty"`
}

// Message is the generic form of a task, published as is by
// [Producer.Publish]; the typed methods such as
// [Producer.PublishSummarization] build one.
type Message struct {
	// Type is required; it picks the routing key (see [TaskType.RoutingKey])
	// and the AMQP "type" property.
	Type TaskType
	// ID is the AMQP message id, kept across retries so that consumers can
	// de-duplicate. Empty means the Producer generates a UUIDv7. If set, it
	// is 1 to 128 visible ASCII characters (0x21 to 0x7E, so no spaces).
	ID string
	// Body is the message body, sent as is. It is required and must be a
	// JSON object in valid UTF-8, at most the Producer's body limit (by
	// default 1 MiB + 64 KiB). The Producer does not check it against the
	// task schema: the typed methods write bodies that follow it.
	Body []byte
}
