package mlproducer

import (
	"context"
	"time"
)

// PublishSummarization publishes a summarization task for the share shareID
// with the text content. shareID must be at most 256 bytes of valid UTF-8,
// not blank, with no control characters (see the package doc). It validates
// its input before anything is sent, including the size of the body it makes:
// content within [WithMaxContentBytes] can still be refused when escaping it
// as JSON makes the body longer than the body limit (an [*InvalidTaskError]
// for "content" that wraps [ErrTooLarge]). Otherwise it behaves as
// [Producer.Publish], with the same outcomes: a nil error means the Producer
// owns the message; the [Receipt] gives its ID and how far it got before ctx
// ended or the confirm timeout passed.
func (p *Producer) PublishSummarization(ctx context.Context, shareID, content string, opts SummarizationOptions, popts ...PublishOption) (Receipt, error) {
	size, err := p.cfg.limits.validateSummarization(shareID, content, &opts)
	if err != nil {
		p.metrics.count(TaskSummarization, outInvalid)
		return Receipt{}, err
	}
	optID, meta, err := applyPublishOptions(popts)
	if err != nil {
		p.metrics.count(TaskSummarization, outInvalid)
		return Receipt{}, err
	}
	done, err := p.begin(ctx, TaskSummarization)
	if err != nil {
		return Receipt{}, err
	}
	id, err := messageID(optID)
	if err != nil {
		p.abandon(done)
		return Receipt{}, err
	}
	now := time.Now()
	buf, pooled := p.bodies.get(size)
	body := appendSummarizationBody(buf[:0], id, now, shareID, content, &opts)
	return p.submit(ctx, done, id, TaskSummarization, body, p.bodies.kept(body, pooled), now, meta)
}

// PublishTranscription publishes a transcription task for the share shareID
// of the audio or video at mediaURL (by default an https, http, s3 or gs
// URL). It behaves as [Producer.PublishSummarization].
func (p *Producer) PublishTranscription(ctx context.Context, shareID, mediaURL string, opts TranscriptionOptions, popts ...PublishOption) (Receipt, error) {
	size, err := p.cfg.limits.validateTranscription(shareID, mediaURL, &opts)
	if err != nil {
		p.metrics.count(TaskTranscription, outInvalid)
		return Receipt{}, err
	}
	optID, meta, err := applyPublishOptions(popts)
	if err != nil {
		p.metrics.count(TaskTranscription, outInvalid)
		return Receipt{}, err
	}
	done, err := p.begin(ctx, TaskTranscription)
	if err != nil {
		return Receipt{}, err
	}
	id, err := messageID(optID)
	if err != nil {
		p.abandon(done)
		return Receipt{}, err
	}
	now := time.Now()
	buf, pooled := p.bodies.get(size)
	body := appendTranscriptionBody(buf[:0], id, now, shareID, mediaURL, &opts)
	return p.submit(ctx, done, id, TaskTranscription, body, p.bodies.kept(body, pooled), now, meta)
}

// PublishEmbedding publishes an embedding task for the share shareID with the
// text content. It behaves as [Producer.PublishSummarization].
func (p *Producer) PublishEmbedding(ctx context.Context, shareID, content string, opts EmbeddingOptions, popts ...PublishOption) (Receipt, error) {
	size, err := p.cfg.limits.validateEmbedding(shareID, content, &opts)
	if err != nil {
		p.metrics.count(TaskEmbedding, outInvalid)
		return Receipt{}, err
	}
	optID, meta, err := applyPublishOptions(popts)
	if err != nil {
		p.metrics.count(TaskEmbedding, outInvalid)
		return Receipt{}, err
	}
	done, err := p.begin(ctx, TaskEmbedding)
	if err != nil {
		return Receipt{}, err
	}
	id, err := messageID(optID)
	if err != nil {
		p.abandon(done)
		return Receipt{}, err
	}
	now := time.Now()
	buf, pooled := p.bodies.get(size)
	body := appendEmbeddingBody(buf[:0], id, now, shareID, content, &opts)
	return p.submit(ctx, done, id, TaskEmbedding, body, p.bodies.kept(body, pooled), now, meta)
}

// messageID returns the id a publish option gave, or a new UUIDv7.
func messageID(given string) (string, error) {
	if given != "" {
		return given, nil
	}
	return newMessageID()
}
