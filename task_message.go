package mlproducer

import "time"

// SummarizationMessage builds and validates the Message of a summarization
// task, the body [Producer.PublishSummarization] would send, for
// [Producer.PublishAsync] (or [Producer.Publish]): a batch job publishes
// typed tasks without writing their JSON. id is the message ID, written in
// the body too: "" for a new UUIDv7, or the caller's idempotency key, checked
// as [WithMessageID] checks it (pass it here rather than in WithMessageID,
// which would change the AMQP message_id only). The body's createdAt is now.
// The checks are the Producer's own ([WithMaxContentBytes] and the rest), and
// an error is the [*InvalidTaskError] the publish method would return.
func (p *Producer) SummarizationMessage(id, shareID, content string, opts SummarizationOptions) (Message, error) {
	size, err := p.cfg.limits.validateSummarization(shareID, content, &opts)
	if err != nil {
		return Message{}, err
	}
	if id, err = taskMessageID(id); err != nil {
		return Message{}, err
	}
	body := appendSummarizationBody(make([]byte, 0, size), id, time.Now(), shareID, content, &opts)
	return Message{Type: TaskSummarization, ID: id, Body: body}, nil
}

// TranscriptionMessage is [Producer.SummarizationMessage] for a transcription
// task of the audio or video at mediaURL.
func (p *Producer) TranscriptionMessage(id, shareID, mediaURL string, opts TranscriptionOptions) (Message, error) {
	size, err := p.cfg.limits.validateTranscription(shareID, mediaURL, &opts)
	if err != nil {
		return Message{}, err
	}
	if id, err = taskMessageID(id); err != nil {
		return Message{}, err
	}
	body := appendTranscriptionBody(make([]byte, 0, size), id, time.Now(), shareID, mediaURL, &opts)
	return Message{Type: TaskTranscription, ID: id, Body: body}, nil
}

// EmbeddingMessage is [Producer.SummarizationMessage] for an embedding task.
func (p *Producer) EmbeddingMessage(id, shareID, content string, opts EmbeddingOptions) (Message, error) {
	size, err := p.cfg.limits.validateEmbedding(shareID, content, &opts)
	if err != nil {
		return Message{}, err
	}
	if id, err = taskMessageID(id); err != nil {
		return Message{}, err
	}
	body := appendEmbeddingBody(make([]byte, 0, size), id, time.Now(), shareID, content, &opts)
	return Message{Type: TaskEmbedding, ID: id, Body: body}, nil
}

// taskMessageID checks a given id, or makes a new one.
func taskMessageID(id string) (string, error) {
	if id == "" {
		return newMessageID()
	}
	if err := checkMessageID("id", id); err != nil {
		return "", err
	}
	return id, nil
}
