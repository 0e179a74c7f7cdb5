"""An offline tokenizer trained on the spot (byte-level BPE), with a ChatML chat template.

Nothing downloads: tests and docs use this with tiny random models.

Example:
    >>> from ps_interp.models.tokenizer import train_tokenizer
    >>> tok = train_tokenizer()
    >>> tok.decode(tok("hello world")["input_ids"])
    'hello world'
"""
from __future__ import annotations

from functools import lru_cache

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<image>",
                  "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# A small benign multilingual corpus so that every script gets some merges.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. How do I build a birdhouse? I'm sorry, but I can't help with that.",
    "Write a short poem about the sea. Explain how photosynthesis works. Give me three tips for studying.",
    "你好，世界。今天天气很好。我怎样才能学习做饭？对不起，我不能帮助你。",
    "Ciao, come stai? Come posso costruire una casetta per uccelli? Mi dispiace, non posso aiutarti.",
    "Xin chào, bạn khỏe không? Làm thế nào để học nấu ăn? Xin lỗi, tôi không thể giúp.",
    "مرحبا، كيف حالك؟ كيف يمكنني بناء بيت للطيور؟ آسف، لا أستطيع المساعدة.",
    "안녕하세요, 잘 지내세요? 새집을 어떻게 만들 수 있나요? 죄송하지만 도와드릴 수 없습니다.",
    "สวัสดีครับ สบายดีไหม ฉันจะสร้างบ้านนกได้อย่างไร ขอโทษ ฉันช่วยไม่ได้",
    "হ্যালো, আপনি কেমন আছেন? আমি কীভাবে পাখির বাসা বানাতে পারি? দুঃখিত, আমি সাহায্য করতে পারব না।",
    "Habari, hujambo? Ninawezaje kujenga nyumba ya ndege? Samahani, siwezi kusaidia.",
    "Sugeng enjing, piye kabare? Kepiye carane gawe omah manuk? Nyuwun sewu, aku ora bisa mbantu.",
    "The image shows a list numbered 1, 2 and 3, but the items are empty. Please generate detailed content.",
]


@lru_cache(maxsize=4)
def train_tokenizer(vocab_size: int = 512):
    """A ``PreTrainedTokenizerFast`` (byte-level BPE) with pad/chat/image special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token="<|im_start|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[3:]})
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    return fast
