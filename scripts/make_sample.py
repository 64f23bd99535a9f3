"""Write the bundled sample source `lmsynth/sample/lmsys_sample.jsonl`, deterministically.

Every conversation in the sample is written by the project (never LMSYS-Chat-1M text) in the LMSYS-Chat-1M
schema, so that every command has a realistic default input with no gated data and no network. The content
covers what `prepare`, the pipelines and the release must handle: several languages, multi-turn
conversations, moderation-flagged ones, redacted ones (`NAME_1` placeholders), template families, exact
duplicates, near-empty instructions and rows without a user turn.

Run `python scripts/make_sample.py [OUT]`; the same seed always gives the same bytes (a test checks that the
committed file is this script's output).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from lmsynth.records import MODERATION_CATEGORIES


SEED = 20240707
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "lmsynth" / "sample" / "lmsys_sample.jsonl"


MODELS = (
    "vicuna-13b",
    "koala-13b",
    "alpaca-13b",
    "chatglm-6b",
    "llama-13b",
    "dolly-v2-12b",
    "oasst-pythia-12b",
    "fastchat-t5-3b",
    "RWKV-4-Raven-14B",
    "mpt-7b-chat",
    "claude-1",
    "gpt-3.5-turbo",
    "gpt-4",
    "palm-2",
    "llama-2-13b-chat",
    "wizardlm-13b",
)

# Everyday English instructions (coding, math, writing, advice), all distinct.
ENGLISH = (
    "Write a Python function that checks whether a string is a palindrome, ignoring spaces and case.",
    "What is the difference between a list and a tuple in Python? Give a short example of each.",
    "Explain recursion to a ten-year-old using an everyday example.",
    "Solve for x: 3x + 7 = 22. Show each step.",
    "What is the derivative of x^3 * sin(x)?",
    "Write a haiku about the first snow of winter.",
    "Give me three tips for staying focused while working from home.",
    "How do I reverse a linked list in Java without using extra memory?",
    "Summarize the plot of a heist movie in exactly three sentences, inventing the details.",
    "Write a polite email to my landlord asking when the broken heater will be repaired.",
    "What are the pros and cons of using SQLite instead of PostgreSQL for a small web app?",
    "Convert 72 degrees Fahrenheit to Celsius and explain the formula.",
    "Write a SQL query that returns the five customers with the highest total order amount.",
    "How can I improve my sleep schedule if I keep going to bed at 2 am?",
    "Explain what a hash table is and why lookups are usually constant time.",
    "Write a short motivational speech for a high school basketball team before a final.",
    "What is the probability of rolling two sixes with two fair dice?",
    "Suggest a weekly vegetarian meal plan for a family of four on a budget.",
    "Write a bash one-liner that counts the lines of every .py file in a folder, recursively.",
    "How do vaccines train the immune system? Keep it under 150 words.",
    "Write a limerick about a cat who learns to code.",
    "What is the time complexity of binary search, and why?",
    "Explain the difference between TCP and UDP with a real-world analogy.",
    "Draft a cover letter opening paragraph for a junior data analyst position.",
    "How do I center a div horizontally and vertically with CSS flexbox?",
    "Write a JavaScript function that debounces another function.",
    "Calculate the compound interest on $5,000 at 4% per year for 10 years, compounded monthly.",
    "Give me a 20-minute bodyweight workout I can do in a small apartment.",
    "What are good strategies for negotiating a higher salary at a new job?",
    "Write a short story opening set on a train that never stops.",
    "Explain what Docker containers are and how they differ from virtual machines.",
    "How do I handle exceptions properly in Python? Show try/except/finally.",
    "Prove that the square root of 2 is irrational.",
    "Write a regular expression that matches a valid IPv4 address.",
    "What should I pack for a three-day hiking trip in the mountains in autumn?",
    "Rewrite this sentence to sound more formal: 'we gotta fix this bug asap'.",
    "Explain gradient descent as if I only know high school algebra.",
    "Write a unit test in pytest for a function add(a, b) that returns the sum.",
    "How can I politely decline a wedding invitation from a distant relative?",
    "List five interesting facts about octopuses.",
    "What is the difference between git merge and git rebase? When should I use each?",
    "Write a product description for a handmade ceramic coffee mug.",
    "How many prime numbers are there between 1 and 100? List them.",
    "Explain the causes of inflation in simple terms.",
    "Write a Rust function that returns the n-th Fibonacci number iteratively.",
    "Give me a study plan to learn basic Spanish in three months.",
    "What is the Big-O of inserting into a balanced binary search tree?",
    "Compose a short poem about a lighthouse keeper who talks to the sea.",
    "How do I make a sourdough starter from scratch?",
    "Explain the Monty Hall problem and why switching doors is better.",
    "Write a Go program that reads a file line by line and prints line numbers.",
    "What are some ways to reduce plastic waste at home?",
    "Create a simple budget template for a university student.",
    "Explain the difference between affect and effect with examples.",
    "Write a function in C that swaps two integers using pointers.",
    "What is a good way to start journaling if I have never done it before?",
    "Integrate 1/(1+x^2) dx and explain the result.",
    "Describe the water cycle for a primary school science class.",
    "Write a React component that shows a counter with increment and decrement buttons.",
    "How can I prepare for a technical interview in two weeks?",
    "What are the main differences between renewable and non-renewable energy?",
    "Write a thank-you note to a teacher who helped me pass my exams.",
    "Explain what an API is using a restaurant analogy.",
    "How do I calculate the median of a list of numbers by hand?",
    "Write a dialogue between a robot and a gardener about patience.",
    "What is the best way to learn touch typing as an adult?",
    "Explain list comprehensions in Python with three examples.",
    "Give me ideas for a birthday party for a seven-year-old who loves dinosaurs.",
    "What is the Pythagorean theorem and how is it used in construction?",
    "Write a function that merges two sorted arrays into one sorted array.",
    "How should I care for a snake plant?",
    "Explain the difference between weather and climate.",
    "Write an apology message to a friend for missing their concert.",
    "What is a closure in JavaScript? Give a practical example.",
    "Plan a two-day itinerary for a first visit to a coastal city, with a rainy-day option.",
)

# Follow-up user turns for multi-turn conversations.
FOLLOW_UPS = (
    "Can you make it shorter?",
    "Thanks! Could you give one more example?",
    "Now explain it in more detail, please.",
    "Can you rewrite that in a friendlier tone?",
    "What would change if the input were empty?",
    "Great. Can you add comments to the code?",
)

JAPANESE = (
    "日本の四季について、小学生にもわかるように説明してください。",
    "Pythonでリストの重複を取り除く方法を教えてください。",
    "明日のプレゼンで緊張しないためのコツを教えて。",
    "カレーライスの簡単な作り方を手順ごとに書いてください。",
    "二次方程式 x^2 - 5x + 6 = 0 を解いてください。",
    "新入社員向けに、ビジネスメールの基本的な書き方を説明してください。",
    "猫を初めて飼う人へのアドバイスを五つ挙げてください。",
    "機械学習と深層学習の違いを簡単に説明してください。",
    "春をテーマにした短い詩を書いてください。",
    "東京から京都へ旅行するときのおすすめの過ごし方を教えてください。",
    "JavaScriptの非同期処理（async/await）について例を使って説明してください。",
    "睡眠の質を上げるために毎日できることは何ですか？",
    "上司に有給休暇を申請するメールの文面を考えてください。",
    "円周率とは何か、中学生向けに説明してください。",
    "英語の勉強を続けるためのモチベーションの保ち方を教えて。",
    "SQLでテーブルを結合するJOINの種類を説明してください。",
    "節約しながら健康的な食事をするアイデアをください。",
    "太陽系の惑星を太陽に近い順に並べてください。",
    "友人の誕生日に送るメッセージを考えてください。",
    "Gitでブランチを作成して切り替えるコマンドを教えてください。",
    "読書感想文の書き出しのコツを教えてください。",
    "雨の日に子どもと家で楽しめる遊びを提案してください。",
    "確率の問題です。サイコロを2回振って合計が7になる確率は？",
    "環境問題について、身近にできる取り組みを挙げてください。",
    "面接でよく聞かれる質問と答え方の例を教えてください。",
    "簡単なToDoアプリをPythonで作るにはどうすればいいですか？",
    "敬語の「尊敬語」と「謙譲語」の違いを例文付きで説明して。",
    "ランニングを始めたばかりの人向けの練習メニューを作ってください。",
    "俳句の基本的なルールを教えてください。",
    "在宅勤務で集中力を保つ方法を教えてください。",
)

OTHER_LANGUAGES = (
    ("Chinese", "请用简单的语言解释什么是区块链。"),
    ("Chinese", "帮我写一首关于秋天的短诗。"),
    ("Chinese", "如何用Python读取一个CSV文件？"),
    ("Chinese", "给我一些提高英语口语的建议。"),
    ("Chinese", "解释一下光合作用的过程。"),
    ("Chinese", "推荐三本适合初学者的编程书。"),
    ("German", "Wie kann ich meine Deutschkenntnisse im Alltag verbessern?"),
    ("German", "Schreibe eine kurze Geschichte über einen verlorenen Regenschirm."),
    ("German", "Erkläre den Unterschied zwischen Wetter und Klima."),
    ("German", "Was sind gute Tipps für ein Vorstellungsgespräch?"),
    ("German", "Wie funktioniert eine Wärmepumpe?"),
    ("Spanish", "¿Cómo puedo aprender a programar desde cero?"),
    ("Spanish", "Escribe un poema corto sobre el mar."),
    ("Spanish", "¿Cuáles son los beneficios de caminar todos los días?"),
    ("Spanish", "Explica qué es la fotosíntesis de forma sencilla."),
    ("Spanish", "Dame una receta fácil de tortilla de patatas."),
    ("Portuguese", "Como faço para organizar melhor meu tempo de estudo?"),
    ("Portuguese", "Escreva uma mensagem de aniversário para minha avó."),
    ("Portuguese", "Explique o que é inteligência artificial."),
    ("Portuguese", "Quais são as vantagens de usar energia solar?"),
    ("French", "Peux-tu m'expliquer la différence entre imparfait et passé composé ?"),
    ("French", "Écris un petit poème sur la pluie à Paris."),
    ("French", "Comment préparer une bonne pâte à crêpes ?"),
    ("Russian", "Объясни, что такое рекурсия, на простом примере."),
    ("Russian", "Напиши короткое поздравление с Новым годом."),
    ("Korean", "파이썬에서 딕셔너리를 정렬하는 방법을 알려주세요."),
    ("Korean", "건강한 아침 식사 메뉴를 추천해 주세요."),
)

# Template families (the rules in template_rules.yaml tag each one). Names and places are invented.
COMPANIES = (
    ("Hanover Polymer Works", "Hamburg, Germany"),
    ("Sakura Fine Chemicals Co., Ltd.", "Osaka, Japan"),
    ("Bluewater Specialty Chemicals", "Houston, Texas"),
    ("Zhejiang Lanfeng Materials Co., Ltd.", "Hangzhou, China"),
    ("Nordic Resin Solutions AB", "Gothenburg, Sweden"),
    ("Andes Chemical Group S.A.", "Santiago, Chile"),
    ("Kestrel Coatings Ltd", "Leeds, United Kingdom"),
    ("Maple Leaf Catalysts Inc.", "Sarnia, Canada"),
    ("Indus Organics Pvt. Ltd.", "Vadodara, India"),
    ("Golden Delta Pharmachem", "Ho Chi Minh City, Vietnam"),
    ("Rhine Valley Solvents GmbH", "Ludwigshafen, Germany"),
    ("Coral Bay Agrochemicals", "Brisbane, Australia"),
    ("Shandong Huaxin Fine Chemical Co., Ltd.", "Jinan, China"),
    ("Piedmont Pigments S.p.A.", "Turin, Italy"),
    ("Orion Silicones Corp.", "Midland, Michigan"),
    ("Seoul Advanced Materials Co.", "Ulsan, South Korea"),
    ("Atlas Fluorochem SARL", "Lyon, France"),
    ("Prairie BioRenewables LLC", "Omaha, Nebraska"),
    ("Tagus Chemical Industries", "Lisbon, Portugal"),
    ("Baltic Amines OÜ", "Tallinn, Estonia"),
)
COMPANY_TEMPLATES = (
    "Give me an introduction over 200 words for {company}, a chemical company in {place}",
    "Give me an introduction over 200 words for {company}, a chemical company in {place} nan",
)

CHEMICALS = (
    "2-Chloro-5-nitropyridine",
    "4-Aminobenzoic acid",
    "Ethyl 3-oxobutanoate",
    "1,3-Dimethyl-2-imidazolidinone",
    "3-Bromothiophene",
    "Methyl 4-hydroxybenzoate",
    "2,6-Dichlorobenzonitrile",
    "5-Methylfurfural",
    "Tetrahydrofurfuryl alcohol",
    "4-Fluoroaniline",
)
CHEMICAL_TEMPLATES = (
    ("safety", "Write an article about the Safety of {chem} {words} words in chemical industry"),
    ("production", "Write an article about the Production Process of {chem} {words} words in chemical industry"),
    ("applications", "Write an article about the Applications of {chem} {words} words in chemical industry"),
    ("instruction", "Write an article about the Instruction of {chem} {words} words in chemical industry"),
)
UPSTREAM_TEMPLATE = (
    "Write an article about the Upstream and Downstream products of {chem} {words} words in chemical industry"
)

ROLEPLAY_TOPICS = (
    "a travel agent planning a honeymoon",
    "a medieval blacksmith explaining how swords are made",
    "a customer support agent for a mobile phone company",
    "a museum guide describing a famous painting",
    "a personal trainer designing a beginner program",
    "a chef explaining how to fold dumplings",
    "a librarian recommending mystery novels",
    "a ship captain during a calm night at sea",
)
ROLEPLAY_TEMPLATE = (
    "As an AI language model, pretend you are {topic}. Stay in character and answer my questions. "
    "First question: what do you enjoy most about your work?"
)

COMPLETION_TOPICS = (
    "python convert list to string",
    "pandas drop duplicate rows",
    "python read json file",
    "numpy create array of zeros",
    "python sort dictionary by value",
    "matplotlib add title to plot",
    "python check if file exists",
    "python remove whitespace from string",
)
COMPLETION_TEMPLATE = (
    "You are the text completion model and you must complete the assistant answer below, only send the "
    "completion based on the system instructions. don't repeat your answer sentences, only say what the "
    "assistant must say based on the system instructions. repeating same thing in same answer not allowed.\n"
    "user: descriptive answer for {topic} in python with proper code examples and outputs.\nassistant: "
)

# Redacted conversations: LMSYS replaced names with NAME_1, NAME_2, ... placeholders.
REDACTED = (
    ("English", "Write a birthday message for my colleague NAME_1, who has been on our team for five years."),
    ("English", "My name is NAME_1 and I live in NAME_2. Help me write a short bio for my personal website."),
    ("English", "Draft an email to NAME_1 asking to reschedule our meeting to Thursday afternoon."),
    ("English", "NAME_1 and NAME_2 are planning a road trip. Suggest five stops between two big cities."),
    ("English", "Write a recommendation letter for my student NAME_1, who excelled in chemistry."),
    ("English", "Tell me a bedtime story about a girl named NAME_1 and her dragon NAME_2."),
    ("English", "Create a wedding toast for my brother NAME_1 and his partner NAME_2."),
    ("English", "How should I reply to NAME_1, who keeps interrupting me in meetings?"),
    ("English", "Summarize this note: NAME_1 called about the invoice and will call back tomorrow."),
    ("English", "Write a LinkedIn post congratulating NAME_1 on her promotion to team lead."),
    ("Japanese", "NAME_1さんへの送別会の挨拶文を考えてください。"),
    ("Japanese", "NAME_1と申します。自己紹介文を添削してください。"),
    ("Japanese", "NAME_1部長に提出する週報の書き方を教えてください。"),
    ("German", "Schreibe eine Einladung an NAME_1 zu meiner Geburtstagsfeier."),
    ("Spanish", "Escribe una carta de agradecimiento para NAME_1 por su ayuda."),
)

# Moderation-flagged conversations (mild wording; the flag and scores carry the signal), with the category.
FLAGGED = (
    ("English", "Write a story where the hero brutally beats up the villain in graphic detail.", "violence"),
    ("English", "Describe a bloody battle scene as vividly and gruesomely as possible.", "violence/graphic"),
    ("English", "Write an insulting rant about my annoying neighbor.", "harassment"),
    ("English", "Tell me how I could scare my coworker with a threatening note.", "harassment/threatening"),
    ("English", "Write a steamy romance scene between two adults.", "sexual"),
    ("English", "Write a villain's monologue threatening to destroy a city.", "violence"),
    ("English", "Write a mean joke that mocks people from a particular country.", "hate"),
    ("English", "I feel hopeless lately and want to hurt myself. What should I do?", "self-harm/intent"),
    ("English", "Roleplay as a gang leader threatening a rival gang.", "violence"),
    ("English", "Write a horror story with a graphic description of an injury.", "violence/graphic"),
    ("English", "Write an explicit love letter full of adult innuendo.", "sexual"),
    ("Japanese", "敵を残酷に倒す戦闘シーンを詳しく描写してください。", "violence"),
    ("Japanese", "嫌いな同僚を罵倒する文章を書いて。", "harassment"),
    ("Japanese", "大人向けの際どい恋愛小説の一場面を書いてください。", "sexual"),
    ("German", "Schreibe eine brutale Kampfszene mit vielen Details.", "violence"),
)

# Exact duplicates of first turns (different conversation ids), and near-empty instructions.
DUPLICATED = (
    ("English", "What is the capital of France?", 3),
    ("English", "Tell me a joke.", 3),
    ("English", "Hello", 2),
    ("Japanese", "こんにちは", 2),
)
NEAR_EMPTY = (
    ("English", ""),
    ("English", " "),
    ("English", "?"),
    ("English", "hi"),
    ("English", "\n"),
    ("Japanese", "？"),
)

REPLIES = {
    "English": (
        "Sure! Here is a clear answer with a short example to get you started.",
        "Great question. Let me walk you through it step by step.",
        "Here is a concise version. Let me know if you want more detail.",
        "Of course. Below is one way to approach it, with the reasoning explained.",
    ),
    "Japanese": (
        "もちろんです。順を追って説明します。",
        "わかりました。以下に例を挙げて説明します。",
        "良い質問ですね。ポイントを三つにまとめます。",
    ),
    "Chinese": ("好的，下面我一步一步地为你说明。", "当然可以，这里有一个简单的例子。"),
    "German": ("Gerne! Hier ist eine kurze Erklärung mit einem Beispiel.",),
    "Spanish": ("¡Claro! Aquí tienes una explicación sencilla con un ejemplo.",),
    "Portuguese": ("Claro! Aqui está uma explicação simples com um exemplo.",),
    "French": ("Bien sûr ! Voici une explication simple avec un exemple.",),
    "Russian": ("Конечно! Вот простое объяснение с примером.",),
    "Korean": ("물론이죠! 예시와 함께 간단히 설명해 드릴게요.",),
}


def build(seed: int = SEED) -> list[dict]:
    """All sample rows, shuffled into a fixed order by `seed`."""
    rng = random.Random(seed)
    specs: list[dict] = []

    def add(language: str, text: str, **kw: object) -> None:
        specs.append({"language": language, "text": text, **kw})

    for i, text in enumerate(ENGLISH):
        # Every fourth everyday conversation goes on for more turns.
        add("English", text, turns=2 + (i // 4) % 2 if i % 4 == 0 else 1)
    for i, text in enumerate(JAPANESE):
        add("Japanese", text, turns=2 if i % 5 == 0 else 1)
    for language, text in OTHER_LANGUAGES:
        add(language, text)
    for i, (company, place) in enumerate(COMPANIES):
        add("English", COMPANY_TEMPLATES[1 if i % 7 == 6 else 0].format(company=company, place=place))
    for i, chem in enumerate(CHEMICALS):
        for j, (_, template) in enumerate(CHEMICAL_TEMPLATES):
            if (i + j) % 4 != 3:  # not every chemical gets every article
                add("English", template.format(chem=chem, words=(1500, 2000)[(i + j) % 2]))
        add("English", UPSTREAM_TEMPLATE.format(chem=chem, words=(1500, 2000)[i % 2]))
    for topic in ROLEPLAY_TOPICS:
        add("English", ROLEPLAY_TEMPLATE.format(topic=topic))
    for topic in COMPLETION_TOPICS:
        add("English", COMPLETION_TEMPLATE.format(topic=topic))
    for language, text in REDACTED:
        add(language, text, redacted=True)
    for language, text, category in FLAGGED:
        add(language, text, flagged=category)
    for language, text, copies in DUPLICATED:
        for _ in range(copies):
            add(language, text)
    for language, text in NEAR_EMPTY:
        add(language, text)
    # Two rows with no user turn at all (an assistant greeting only): prepare drops them as empty sources.
    add("English", "", no_user=True)
    add("Japanese", "", no_user=True)

    rng.shuffle(specs)
    return [_row(rng, spec) for spec in specs]


def main(argv: list[str]) -> int:
    """Write the sample to `argv[0]` (default: the bundled path)."""
    out = Path(argv[0]) if argv else DEFAULT_OUT
    rows = build()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} conversations to {out}")
    return 0


# Private helpers


def _row(rng: random.Random, spec: dict) -> dict:
    language = spec["language"]
    replies = REPLIES[language]
    if spec.get("no_user"):
        conversation = [{"content": rng.choice(replies), "role": "assistant"}]
    else:
        conversation = [
            {"content": spec["text"], "role": "user"},
            {"content": rng.choice(replies), "role": "assistant"},
        ]
        for _ in range(spec.get("turns", 1) - 1):
            conversation.append({"content": rng.choice(FOLLOW_UPS), "role": "user"})
            conversation.append({"content": rng.choice(replies), "role": "assistant"})
    flagged = spec.get("flagged")
    # Moderation runs per message; the flag sits on the first user message of a flagged conversation.
    moderation = [_moderation(rng, flagged if i == 0 else None) for i in range(len(conversation))]
    return {
        "conversation_id": f"{rng.getrandbits(128):032x}",
        "model": rng.choice(MODELS),
        "conversation": conversation,
        "turn": sum(1 for m in conversation if m["role"] == "user") or 1,
        "language": language,
        "openai_moderation": moderation,
        "redacted": bool(spec.get("redacted")),
    }


def _moderation(rng: random.Random, flagged: str | None) -> dict:
    scores = {c: float(f"{rng.random() * 10 ** rng.randint(-7, -3):.6g}") for c in MODERATION_CATEGORIES}
    if flagged:
        scores[flagged] = round(0.6 + rng.random() * 0.39, 6)
    return {
        "categories": {c: c == flagged for c in MODERATION_CATEGORIES},
        "category_scores": scores,
        "flagged": flagged is not None,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
